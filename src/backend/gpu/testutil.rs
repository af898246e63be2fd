//! Test helpers shared by the GPU families' reference tests: the emulated backend, the
//! real GPU when there is one (`cuda`: the families' `cuda_*` tests run the emulated
//! checks there too, plus U-Net-sized shapes), the CPU oracle, seeded random data placed
//! at an offset inside NaN-guarded buffers (so stray writes and unwritten outputs both
//! show), and error measures.

use crate::backend::cpu::CpuBackend;
use crate::backend::{Act, Backend, WeightKind};
use crate::dtype::Precision;
use crate::tensor::HostTensor;

use super::cuda::CudaDevice;
use super::device::Device;
use super::emu::{EmuChecks, EmuDevice};
use super::GpuBackend;

/// Offset of every test region inside its buffer (exercises `off`).
pub const OFF: usize = 5;
/// NaN floats after every test region.
const GUARD: usize = 7;

/// The emulated backend for the per-op tests: every implemented emulator check on
/// (`DIFFSTYLE_EMU_CHECK` / `DIFFSTYLE_EMU_SEED` choose others), so each kernel is
/// checked at every shape its tests run.
pub fn emu(precision: Precision) -> GpuBackend<EmuDevice> {
    let checks = if std::env::var_os("DIFFSTYLE_EMU_CHECK").is_some() {
        EmuChecks::from_env().expect("DIFFSTYLE_EMU_CHECK")
    } else {
        EmuChecks { seed: EmuChecks::from_env().map(|c| c.seed).unwrap_or(0), ..EmuChecks::all() }
    };
    GpuBackend::new(EmuDevice::with_checks(checks), precision)
}

/// The backend on GPU 0, or `None` (printing why) when this machine has no usable GPU
/// or the build has no kernels: `cuda_*` tests return early then.
pub fn cuda(precision: Precision) -> Option<GpuBackend<CudaDevice>> {
    match CudaDevice::new(0) {
        Ok(d) => Some(GpuBackend::new(d, precision)),
        Err(e) => {
            eprintln!("skipped: no usable GPU ({e:#})");
            None
        }
    }
}

/// The CPU oracle for checks against `gpu`: two threads next to the emulator (tests run
/// in parallel), every core next to a real GPU (U-Net-sized references, one test at a
/// time).
pub fn cpu_for<D: Device>(gpu: &GpuBackend<D>) -> CpuBackend {
    CpuBackend::new(if is_cuda(gpu) { 0 } else { 2 })
}

/// True when the emulated tests run on the emulator's FMA copy
/// (`DIFFSTYLE_EMU_CHECK=fma`): rounding as on a GPU, not bit-exact to the CPU oracle.
pub fn fma_model() -> bool {
    EmuChecks::from_env().is_ok_and(|c| c.bits & EmuChecks::FMA.1 != 0)
}

/// True when `gpu` is a real GPU (whose f64 libm may differ from glibc by an ulp).
pub fn is_cuda<D: Device>(gpu: &GpuBackend<D>) -> bool {
    gpu.device().kind() == "cuda"
}

pub use crate::backend::cpu::testutil::rand_vec;

/// A fresh NaN buffer holding `data` at `OFF`.
pub fn place<B: Backend>(be: &B, data: &[f32]) -> B::Buf {
    let buf = be.alloc(OFF + data.len() + GUARD).unwrap();
    be.upload(Act::new(&buf, OFF, 1, data.len(), 1, 1), data).unwrap();
    buf
}

/// A fresh all-NaN buffer for an output of `len` floats at `OFF`.
pub fn poisoned<B: Backend>(be: &B, len: usize) -> B::Buf {
    be.alloc(OFF + len + GUARD).unwrap()
}

pub fn act<B>(buf: &B, n: usize, c: usize, h: usize, w: usize) -> Act<'_, B> {
    Act::new(buf, OFF, n, c, h, w)
}

/// Downloads the `len` floats at `OFF`, asserting the guards around them stayed NaN
/// and the region was fully written.
pub fn read<B: Backend>(be: &B, buf: &B::Buf, len: usize) -> Vec<f32> {
    let all = be.download(Act::new(buf, 0, 1, OFF + len + GUARD, 1, 1)).unwrap();
    assert!(all[..OFF].iter().chain(&all[OFF + len..]).all(|v| v.is_nan()), "write outside the output region");
    let v = all[OFF..OFF + len].to_vec();
    assert!(v.iter().all(|x| x.is_finite()), "output not fully written (NaN/inf left)");
    v
}

/// Uploads a weight, rounded through `precision` first (as `UNet::new` does), so the
/// CPU oracle and the GPU compute with the same values.
pub fn weight<B: Backend>(be: &B, shape: &[usize], data: &[f32], kind: WeightKind, precision: Precision) -> B::Weight {
    let d = data.iter().map(|&v| precision.round(v)).collect();
    be.upload_weight(&HostTensor::new(shape.to_vec(), d), kind).unwrap()
}

/// Relative L2 error of `got` against `want`.
pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    crate::tensor::rel_l2(got, want)
}

/// The design's bound for one op at a storage precision (design.md); on the emulator's
/// FMA model (`DIFFSTYLE_EMU_CHECK=fma`, run by .ci/run) divided by `FMA_MARGIN`, so
/// that the bound is shown to hold with room for a GPU's rounding.
pub fn bound(p: Precision) -> f64 {
    let b = match p {
        Precision::F32 => 1e-5,
        Precision::F16 => 3e-3,
        Precision::Bf16 => 1e-2,
    };
    if fma_model() {
        b / super::emu::FMA_MARGIN
    } else {
        b
    }
}
