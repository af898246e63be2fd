//! Real-GPU tests: the same checks as the emulated ones on an NVIDIA GPU, plus the
//! large sizes. Each test is skipped, with the reason printed, when no usable GPU is
//! present (no driver, no device, or a build without kernels).

mod common;

use common::{forward_on, run_case_on, FORWARD_BOUNDS, MIN_PSNR_16BIT, MIN_PSNR_F32};
use diffstyle::backend::cpu::CpuBackend;
use diffstyle::backend::gpu::cuda::CudaDevice;
use diffstyle::backend::gpu::GpuBackend;
use diffstyle::dtype::Precision;
use diffstyle::model::arch::UNetArch;
use diffstyle::model::schedule::Schedule;

use diffstyle::model::weights::LoadedModel;
use diffstyle::tensor::rel_l2;

fn gpu(p: Precision) -> Option<GpuBackend<CudaDevice>> {
    match CudaDevice::new(0) {
        Ok(d) => Some(GpuBackend::new(d, p)),
        Err(e) => {
            eprintln!("skipped: no usable GPU ({e:#})");
            None
        }
    }
}

#[test]
fn method_cases_f32() {
    let Some(be) = gpu(Precision::F32) else { return };
    for case in [
        "defaults",
        "omega",
        "dt_lambda",
        "mask",
        "replace_lt_gen",
        "replace_zero",
        "inv_ne_gen",
        "harmonize",
        "edit_999",
    ] {
        run_case_on(&be, Precision::F32, case, MIN_PSNR_F32);
    }
}

#[test]
fn method_reduced_precision() {
    for p in [Precision::Bf16, Precision::F16] {
        let Some(be) = gpu(p) else { return };
        for case in ["defaults", "mask", "omega"] {
            run_case_on(&be, p, case, MIN_PSNR_16BIT);
        }
    }
}

/// One forward of the 256x256 DDPM U-Net (113 M parameters, random weights) against
/// the CPU oracle, in f32, bf16 and f16.
#[test]
fn ddpm256_forward_vs_cpu() {
    if gpu(Precision::F32).is_none() {
        return;
    }
    let model = LoadedModel::random(&UNetArch::ddpm_256(), Schedule::ddpm_linear(), 7);
    let mut s = 99u64;
    let x: Vec<f32> = (0..3 * 256 * 256)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect();
    let cpu = forward_on(&CpuBackend::new(0), &model, Precision::F32, &x);
    for (p, bound) in FORWARD_BOUNDS {
        let be = gpu(p).expect("the GPU was usable a moment ago");
        let got = forward_on(&be, &model, p, &x);
        let e = rel_l2(&got, &cpu);
        eprintln!(
            "ddpm256 forward {p:?} vs CPU f32: rel. L2 {e:.2e}; peak device memory {} MiB",
            be.peak_bytes() >> 20
        );
        assert!(e < bound, "{p:?}: rel. L2 {e:e} >= {bound:e}");
    }
}

/// Pairs packed in one batch equal the same pairs run alone on the GPU (bf16 weights:
/// the tensor-core path).
#[test]
fn batched_pairs_equal_single() {
    let Some(be) = gpu(Precision::Bf16) else { return };
    let worst = common::batched_pairs_equal_single(&be, Precision::Bf16);
    assert_eq!(worst, 0.0, "batched pairs differ from single pairs by up to {worst:e}");
}
