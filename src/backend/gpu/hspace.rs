//! h-space mix launcher (kernels/hspace.cu). Being written.

use anyhow::{bail, Result};

use super::device::Device;
use super::{GpuBackend, GpuBuf};
use crate::backend::Act;

pub(super) fn hspace_mix<D: Device>(
    _be: &GpuBackend<D>,
    _h: Act<'_, GpuBuf>,
    _hc: Act<'_, GpuBuf>,
    _gamma: f32,
    _mask: Option<Act<'_, GpuBuf>>,
    _out: Act<'_, GpuBuf>,
) -> Result<()> {
    bail!("hspace_mix: the GPU kernel is not in this build yet")
}
