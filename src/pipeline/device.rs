//! Which backend runs a pipeline: the `--device` choice and turning it into a backend.

use anyhow::{Context, Result};

use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::cuda::CudaDevice;
use crate::backend::gpu::emu::EmuDevice;
use crate::backend::gpu::GpuBackend;
use crate::dtype::Precision;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// The CPU backend, on the CPU's best instruction set (`DIFFSTYLE_CPU_ISA` forces one).
    Cpu,
    /// An NVIDIA GPU (compute capability 8.0+) through the hand-written kernels.
    Cuda,
    /// The same kernels run by the host emulator: slow, for checking kernels without a GPU.
    Emu,
    /// A GPU when one is usable, else the CPU.
    Auto,
}

/// The backend a [`DeviceChoice`] asks for.
pub enum Picked {
    Cpu(CpuBackend),
    Emu(GpuBackend<EmuDevice>),
    Cuda(GpuBackend<CudaDevice>),
}

/// Opens the backend: `threads` CPU threads (0 = all cores) on the CPU, its instruction
/// set from `DIFFSTYLE_CPU_ISA` or the best available; weights stored in `precision`
/// (on the CPU, bf16 weights are multiplied in bf16 where the instruction set can).
/// `verbose` says why `Auto` fell back to the CPU.
pub fn pick(device: DeviceChoice, precision: Precision, threads: usize, verbose: bool) -> Result<Picked> {
    Ok(match device {
        DeviceChoice::Cpu => Picked::Cpu(CpuBackend::from_env(threads, precision)?),
        DeviceChoice::Emu => Picked::Emu(GpuBackend::new(EmuDevice::from_env()?, precision)),
        DeviceChoice::Cuda => Picked::Cuda(GpuBackend::new(CudaDevice::new(0).context("--device cuda")?, precision)),
        DeviceChoice::Auto => match CudaDevice::new(0) {
            Ok(d) => Picked::Cuda(GpuBackend::new(d, precision)),
            Err(e) => {
                if verbose {
                    eprintln!("--device auto: using the CPU ({e:#})");
                }
                Picked::Cpu(CpuBackend::from_env(threads, precision)?)
            }
        },
    })
}

/// Runs `$body` with `$be` bound to the backend in `$picked` (each arm is
/// monomorphised).
#[macro_export]
#[doc(hidden)]
macro_rules! with_backend {
    ($picked:expr, |$be:ident| $body:expr) => {
        match $picked {
            $crate::pipeline::device::Picked::Cpu(b) => {
                let $be = &b;
                $body
            }
            $crate::pipeline::device::Picked::Emu(b) => {
                let $be = &b;
                $body
            }
            $crate::pipeline::device::Picked::Cuda(b) => {
                let $be = &b;
                $body
            }
        }
    };
}
