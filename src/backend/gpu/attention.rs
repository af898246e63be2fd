//! Attention launcher (kernels/attention.cu). Being written.

use anyhow::{bail, Result};

use super::device::Device;
use super::{GpuBackend, GpuBuf};
use crate::backend::Act;

pub(super) fn attention<D: Device>(
    _be: &GpuBackend<D>,
    _qkv: Act<'_, GpuBuf>,
    _heads: usize,
    _out: Act<'_, GpuBuf>,
) -> Result<()> {
    bail!("attention: the GPU kernel is not in this build yet")
}
