//! TEMPORARY stub (replaced by the loading branch).
use std::collections::BTreeMap;
use crate::tensor::HostTensor;
use super::arch::UNetArch;
use crate::diffusion::schedule::Schedule;
pub struct LoadedModel {
    pub arch: UNetArch,
    pub schedule: Schedule,
    pub tensors: BTreeMap<String, HostTensor>,
    pub hash: String,
    pub source: String,
}
