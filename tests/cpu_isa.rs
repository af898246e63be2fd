//! The whole method on every CPU instruction-set path this machine runs (the software
//! twins everywhere, the real AVX2 / AVX-512 / AMX layers where the CPU has them),
//! against the portable f32 path: f32 products must agree to f32 rounding, bf16
//! products (weights and activations rounded to bf16, f32 accumulation) to >= 30 dB.

mod common;

use common::fixtures;
use diffstyle::backend::cpu::isa::Isa;
use diffstyle::backend::cpu::CpuBackend;
use diffstyle::diffusion::method::{Engine, Settings};
use diffstyle::dtype::Precision;
use diffstyle::model::unet::UNet;
use diffstyle::model::weights::load_model;
use diffstyle::tensor::psnr_model_space;

/// f32 paths differ from the portable one only in rounding (FMA, summation order).
const MIN_PSNR_F32_PATHS: f64 = 80.0;
/// design.md's bound for reduced precision.
const MIN_PSNR_BF16: f64 = 30.0;

#[test]
fn method_on_every_cpu_isa() {
    let dir = fixtures().join("replace_lt_gen");
    let model = load_model(&fixtures().join("model"), None, None).unwrap();
    // Few steps: the software twins are slow by design; every step kind still runs.
    let s = Settings { inv_steps: 4, gen_steps: 6, replace_steps: 6, ..Settings::default() };
    let size = model.arch.sample_size;
    let content = diffstyle::io::image::load_image(&dir.join("content.png"), size).unwrap().data;
    let style = diffstyle::io::image::load_image(&dir.join("style.png"), size).unwrap().data;
    let run = |be: &CpuBackend, p: Precision| {
        let unet = UNet::new(be, &model, p).unwrap();
        let mut eng = Engine::new(be, &unet, &model.schedule).unwrap();
        let ci = eng.invert(&content, s.inv_steps, &mut || {}).unwrap();
        let si = eng.invert(&style, s.inv_steps, &mut || {}).unwrap();
        eng.transfer(&si.x_t, &ci, &s, None, &mut || {}).unwrap()
    };
    let oracle = run(&CpuBackend::with_isa(2, Isa::Portable, Precision::F32).unwrap(), Precision::F32);
    let mut ran = Vec::new();
    for isa in Isa::ALL {
        if let Err(why) = isa.available() {
            eprintln!("skipped {isa}: {why}");
            continue;
        }
        let be = CpuBackend::with_isa(2, isa, Precision::F32).unwrap();
        let psnr = psnr_model_space(&run(&be, Precision::F32), &oracle);
        eprintln!("{isa} f32 vs portable f32: {psnr:.1} dB");
        assert!(psnr >= MIN_PSNR_F32_PATHS, "{isa} f32: {psnr:.1} dB < {MIN_PSNR_F32_PATHS} dB");
        ran.push(format!("{isa} f32"));
        if isa.bf16_tiles().is_some() {
            let be = CpuBackend::with_isa(2, isa, Precision::Bf16).unwrap();
            let out = run(&be, Precision::Bf16);
            assert!(out.iter().all(|v| v.is_finite()), "{isa} bf16: non-finite output");
            let psnr = psnr_model_space(&out, &oracle);
            eprintln!("{isa} bf16 products vs portable f32: {psnr:.1} dB");
            assert!(psnr >= MIN_PSNR_BF16, "{isa} bf16: {psnr:.1} dB < {MIN_PSNR_BF16} dB");
            assert!(psnr.is_finite(), "{isa} bf16: rounding must change the result");
            ran.push(format!("{isa} bf16"));
        }
    }
    eprintln!("ran: {}", ran.join(", "));
    // The twins run everywhere.
    for must in ["amx-emu bf16", "avx512-emu bf16", "avx512-emu f32", "portable f32"] {
        assert!(ran.iter().any(|r| r == must), "{must} did not run");
    }
}

/// A forced ISA the CPU lacks is refused with the reason; an unknown one names the
/// known ones.
#[test]
fn unavailable_isa_is_refused() {
    for isa in Isa::ALL {
        match (isa.available(), CpuBackend::with_isa(1, isa, Precision::F32)) {
            (Ok(()), Ok(be)) => assert_eq!(be.isa(), isa),
            (Err(why), Err(e)) => assert!(e.to_string().contains(&why) && e.to_string().contains(isa.name()), "{e}"),
            (a, b) => panic!("{isa}: available {a:?} but backend {:?}", b.err()),
        }
    }
}
