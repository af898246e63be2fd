//! The step scheduler's cost per step (issue 25): `Stepper::step` on sets of jobs in
//! different phases, against the forwards each set needs. A step runs the encoder on
//! one sample per job and the decoder on one more per mixing transfer (its h' reads
//! its own encoder sample's skips); a calibrating transfer (omega) adds a full forward.
//! So the prediction is: a step costs about (encoder samples x encoder cost + decoder
//! samples x decoder cost) on the CPU, where a batch of n costs n singles, and the
//! grouping itself (latent copies, per-job DDIM updates) is small next to it.
//!
//! Model: the committed tiny model (`tests/fixtures/method/model`), or
//! `DIFFSTYLE_BENCH_MODEL` (a diffusers folder, or a `.safetensors` file with
//! `DIFFSTYLE_BENCH_ARCH`, e.g. `diffstyle random-model --arch ddpm-256`'s). Backend: the CPU (`DIFFSTYLE_CPU_ISA`
//! as everywhere), or `DIFFSTYLE_BENCH_DEVICE=cuda|emu`. Each set: admit its jobs
//! (long ones: 1000 steps, so none finishes), one warm-up step, then steps until at
//! least 20 and `DIFFSTYLE_BENCH_MIN_SECS` (2) seconds, each timed by
//! `Backend::time_ms` (device events on a GPU); prints the median per set and a JSON
//! line.
//!
//! `cargo bench --bench steps`

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use diffstyle::backend::cpu::CpuBackend;
use diffstyle::backend::gpu::{cuda::CudaDevice, emu::EmuDevice, GpuBackend};
use diffstyle::backend::Backend;
use diffstyle::diffusion::method::{Engine, Settings};
use diffstyle::diffusion::steps::{Stepper, Task};
use diffstyle::dtype::Precision;
use diffstyle::model::unet::UNet;
use diffstyle::model::weights::{load_model, LoadedModel};

/// A set of jobs: (name, inversions, mixing transfers, plain transfers, calibrating).
const SETS: [(&str, usize, usize, usize, usize); 8] = [
    ("1 inversion", 1, 0, 0, 0),
    ("4 inversions", 4, 0, 0, 0),
    ("1 transfer, plain step", 0, 0, 1, 0),
    ("1 transfer, mixing step", 0, 1, 0, 0),
    ("4 transfers, mixing", 0, 4, 0, 0),
    ("2 inversions + 2 mixing", 2, 2, 0, 0),
    ("1 inv + 1 plain + 2 mixing", 1, 2, 1, 0),
    ("1 transfer, calibrating", 0, 0, 0, 1),
];

fn main() -> Result<()> {
    let dir = std::env::var("DIFFSTYLE_BENCH_MODEL").unwrap_or_else(|_| "tests/fixtures/method/model".into());
    let arch = std::env::var("DIFFSTYLE_BENCH_ARCH").ok();
    let model = load_model(dir.as_ref(), None, arch.as_deref()).with_context(|| format!("model {dir}"))?;
    let precision = Precision::F32;
    match std::env::var("DIFFSTYLE_BENCH_DEVICE").as_deref() {
        Ok("cuda") => match CudaDevice::new(0) {
            Ok(d) => run(&GpuBackend::new(d, precision), &model, precision),
            Err(e) => {
                println!("skipped: no usable GPU ({e:#})");
                Ok(())
            }
        },
        Ok("emu") => run(&GpuBackend::new(EmuDevice::from_env()?, precision), &model, precision),
        _ => run(&CpuBackend::from_env(0, precision)?, &model, precision),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run<B: Backend>(be: &B, model: &LoadedModel, precision: Precision) -> Result<()> {
    let unet = UNet::new(be, model, precision)?;
    let sched = &model.schedule;
    let min_secs: f64 = std::env::var("DIFFSTYLE_BENCH_MIN_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let a = &unet.arch;
    let x0: Arc<[f32]> =
        (0..a.in_channels * a.sample_size * a.sample_size).map(|i| ((i % 17) as f32 / 8.5) - 1.0).collect();
    // A content inversion with every key a 1000-step generation may ask for.
    let content = Arc::new(Engine::new(be, &unet, sched)?.invert(&x0, 20, &mut || {})?);
    let long = Settings { inv_steps: 20, gen_steps: 1000, replace_steps: 1000, ..Settings::default() };
    // Mixing at every step (t_edit 0), never (t_edit 999 mixes only t = 999, the
    // warm-up step), and calibrating at every step.
    let mixing = Settings { t_edit: 0, ..long.clone() };
    let plain = Settings { t_edit: 999, ..long.clone() };
    let calibrating = Settings { t_edit: 0, omega: 0.5, ..long.clone() };
    let transfer = |s: &Settings| Task::Transfer {
        style_xt: x0.clone(),
        content: content.clone(),
        settings: s.clone(),
        mask: None,
    };
    println!("{} on {}", model.source, be.describe());
    let mut rows = vec![];
    for (name, inv, mix, pl, cal) in SETS {
        let n = inv + mix + pl + cal;
        let mut st = Stepper::new(be, &unet, sched, n)?;
        for _ in 0..inv {
            st.admit(Task::Invert { x0: x0.clone(), steps: 1000 })?.context("a lane")?;
        }
        for (k, s) in [(mix, &mixing), (pl, &plain), (cal, &calibrating)] {
            for _ in 0..k {
                st.admit(transfer(s))?.context("a lane")?;
            }
        }
        st.step(&mut |_| {})?;
        let t0 = Instant::now();
        let mut times = vec![];
        while times.len() < 20 || t0.elapsed().as_secs_f64() < min_secs {
            let mut finished = 0;
            let ms = be.time_ms(&mut || {
                finished = st.step(&mut |_| {})?.len();
                Ok(())
            })?;
            anyhow::ensure!(finished == 0, "a job finished during the timing");
            times.push(ms);
        }
        let (enc, dec) = (n + cal, n + mix + cal);
        let ms = median(times);
        println!("{name:<28} encoder {enc} + decoder {dec} samples: {ms:8.3} ms per step");
        rows.push(serde_json::json!({"set": name, "encoder_samples": enc, "decoder_samples": dec, "ms": ms}));
    }
    println!("{}", serde_json::json!({ "bench": "steps", "backend": be.describe(), "rows": rows }));
    Ok(())
}
