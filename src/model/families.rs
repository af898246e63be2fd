//! Which builder builds an architecture: the one place a new U-Net family is added.

use super::arch::UNetArch;
use super::graph::Graph;
use super::{adm, ddpm};

impl Graph {
    /// The graph of `arch`, whose structural fields `validate::validate_arch` has
    /// accepted (the group and head counts are checked on the built graph).
    pub fn build(arch: &UNetArch) -> Graph {
        if arch.adm.is_some() {
            adm::build(arch)
        } else {
            ddpm::build(arch)
        }
    }
}
