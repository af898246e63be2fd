//! Whole-method parity: the engine (CPU backend, f32) against goldens from the PyTorch
//! reference of method.md (`tools/dsref`, float64), case by case.

mod common;

use common::{fixtures, fixtures_adm, run_case_in, run_case_on, tensor, MIN_PSNR_16BIT, MIN_PSNR_F32};
use diffstyle::backend::cpu::CpuBackend;
use diffstyle::diffusion::method::{Engine, Settings};
use diffstyle::dtype::Precision;

use diffstyle::model::unet::UNet;
use diffstyle::model::weights::load_model;
use diffstyle::tensor::psnr_model_space;
use safetensors::SafeTensors;

fn run_case(name: &str) -> f64 {
    run_case_on(&CpuBackend::new(0), Precision::F32, name, MIN_PSNR_F32)
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                run_case(stringify!($case));
            }
        )*
    };
}

cases!(defaults, omega, dt_lambda, mask, replace_lt_gen, replace_zero, inv_ne_gen, harmonize, edit_999);

/// The ADM family (FiLM norm, res-block resampling, legacy multi-head attention,
/// learned sigma) through the whole method, fast settings (tests/fixtures/method_adm).
#[test]
fn adm_fast() {
    run_case_in(&CpuBackend::new(0), Precision::F32, &fixtures_adm(), "adm_fast", MIN_PSNR_F32);
}

#[test]
fn adm_mask_omega() {
    run_case_in(&CpuBackend::new(0), Precision::F32, &fixtures_adm(), "adm_mask_omega", MIN_PSNR_F32);
}

/// ADM weights stored as f16 / bf16 (computed in f32) against the golden: >= 30 dB.
#[test]
fn adm_reduced_precision_weights() {
    for p in [Precision::F16, Precision::Bf16] {
        let psnr = run_case_in(&CpuBackend::new(0), p, &fixtures_adm(), "adm_fast", MIN_PSNR_16BIT);
        eprintln!("ADM {p:?} weights vs the f64 golden: PSNR {psnr:.1} dB");
    }
}

/// Inversion then plain DDIM generation reconstructs the image.
#[test]
fn roundtrip() {
    let dir = fixtures().join("roundtrip");
    let model = load_model(&fixtures().join("model"), None, None).unwrap();
    let be = CpuBackend::new(0);
    let unet = UNet::new(&be, &model, Precision::F32).unwrap();
    let mut eng = Engine::new(&be, &unet, &model.schedule).unwrap();
    let x0 = diffstyle::io::image::load_image(&dir.join("content.png"), model.arch.sample_size).unwrap().data;
    let inv = eng.invert(&x0, 50, &mut || {}).unwrap();
    let rec = eng.ddim(&inv.x_t, 50, &mut || {}).unwrap();
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let gold = SafeTensors::deserialize(&bytes).unwrap();
    let vs_ref = psnr_model_space(&rec, &tensor(&gold, "recon"));
    let vs_input = psnr_model_space(&rec, &x0);
    eprintln!("roundtrip: reconstruction vs input {vs_input:.1} dB, vs reference {vs_ref:.1} dB");
    assert!(vs_ref >= 40.0, "reconstruction differs from the reference: {vs_ref:.1} dB");
    assert!(vs_input >= 25.0, "inversion round trip only reaches {vs_input:.1} dB");
}

/// Weights stored as f16 / bf16 (computed in f32) against the f32 run: measured and
/// bounded (design.md: >= 30 dB).
#[test]
fn reduced_precision_weights() {
    let dir = fixtures().join("replace_lt_gen");
    let model = load_model(&fixtures().join("model"), None, None).unwrap();
    let s = Settings { inv_steps: 20, gen_steps: 50, replace_steps: 50, ..Settings::default() };
    let size = model.arch.sample_size;
    let content = diffstyle::io::image::load_image(&dir.join("content.png"), size).unwrap().data;
    let style = diffstyle::io::image::load_image(&dir.join("style.png"), size).unwrap().data;
    let be = CpuBackend::new(0);
    let run = |p: Precision| {
        let unet = UNet::new(&be, &model, p).unwrap();
        let mut eng = Engine::new(&be, &unet, &model.schedule).unwrap();
        let ci = eng.invert(&content, s.inv_steps, &mut || {}).unwrap();
        let si = eng.invert(&style, s.inv_steps, &mut || {}).unwrap();
        eng.transfer(&si.x_t, &ci, &s, None, &mut || {}).unwrap()
    };
    let f32_out = run(Precision::F32);
    for p in [Precision::F16, Precision::Bf16] {
        let psnr = psnr_model_space(&run(p), &f32_out);
        eprintln!("{p:?} weights vs f32: PSNR {psnr:.1} dB");
        assert!(psnr >= 30.0, "{p:?} weights: PSNR {psnr:.1} dB < 30 dB");
        assert!(psnr.is_finite(), "{p:?} rounding must change the result");
    }
}

/// Pairs packed in one batch equal the same pairs run alone, bit for bit.
#[test]
fn batched_pairs_equal_single() {
    let worst = common::batched_pairs_equal_single(&CpuBackend::new(0), Precision::F32);
    assert_eq!(worst, 0.0, "batched pairs differ from single pairs by up to {worst:e}");
}
