//! Sampler-step launchers (kernels/step.cu). Being written.

use anyhow::{bail, Result};

use super::device::Device;
use super::{GpuBackend, GpuBuf};
use crate::backend::{Act, DdimStep};

pub(super) fn ddim_step<D: Device>(_be: &GpuBackend<D>, _p: &DdimStep<'_, GpuBuf>) -> Result<()> {
    bail!("ddim_step: the GPU kernel is not in this build yet")
}

pub(super) fn calibrate<D: Device>(
    _be: &GpuBackend<D>,
    _x: Act<'_, GpuBuf>,
    _eps: Act<'_, GpuBuf>,
    _eps_mod: Act<'_, GpuBuf>,
    _a: f32,
    _omega: f32,
    _out: Act<'_, GpuBuf>,
) -> Result<()> {
    bail!("calibrate: the GPU kernel is not in this build yet")
}
