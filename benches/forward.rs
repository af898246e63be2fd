//! U-Net forward benchmark (batch 1, timestep 500) on the CPU backend, or on a GPU /
//! the emulator with `DIFFSTYLE_BENCH_DEVICE=cuda|emu` (weights in
//! `DIFFSTYLE_BENCH_PRECISION=f32|f16|bf16`, default f32; a missing GPU skips with the
//! reason). `diffstyle bench` is the full GPU benchmark; this is the quick one.
//!
//! Models:
//! * `tiny`: the committed `tests/fixtures/method/model` (3 levels, 32x32);
//! * `ddpm256`: `$DIFFSTYLE_BENCH_DIR/ddpm256` (default `/tmp/diffstyle-bench/ddpm256`),
//!   google/ddpm-celebahq-256's architecture with random weights, made by
//!   `python3 tools/bench_torch_cpu.py --create-only`; skipped when absent.
//!
//! For each model: `load_model`, `UNet`, workspace (1, 1), a random x,
//! one warm-up forward, then forwards until at least `min_runs` (5; 3 for ddpm256) runs
//! and at least `DIFFSTYLE_BENCH_MIN_SECS` (3) seconds are timed, each with
//! `Backend::time_ms` (device events on a GPU). Prints the median,
//! GFLOP/s from `Graph::flops()`, max|eps|, and a JSON line for `tools/bench_cpu.sh`.
//!
//! * `conv3x3`: one 3x3 convolution, 256 -> 256 channels at 64x64 (2.4 GFLOP), random
//!   data: the matrix-product speed of the backend on its own (the same shape is timed
//!   in PyTorch by `tools/bench_torch_cpu.py`).
//!
//! On the CPU the backend is `CpuBackend::from_env`: the best instruction set, or the
//! one `DIFFSTYLE_CPU_ISA` forces; with bf16 weights the convolutions run on the bf16
//! tiles where that instruction set has them. The JSON line names the backend.
//!
//! `cargo bench --bench forward [-- tiny|ddpm256|conv3x3 ...]`; with `DIFFSTYLE_BENCH_PROFILE=1`
//! the forwards run through a wrapper backend that times every op and prints where the
//! time goes by op kind and resolution (the wall time then includes the wrapper's
//! bookkeeping, which is negligible next to the ops).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use diffstyle::backend::cpu::CpuBackend;
use diffstyle::backend::gpu::{cuda::CudaDevice, emu::EmuDevice, GpuBackend};
use diffstyle::backend::{Act, Backend, Conv2d, WeightKind};
use diffstyle::bench::profile::{format_rows, Profiled};
use diffstyle::dtype::Precision;
use diffstyle::rng::fill_gaussian;
use diffstyle::tensor::HostTensor;

use diffstyle::model::unet::UNet;
use diffstyle::model::weights::load_model;

const TIMESTEP: f32 = 500.0;
const SEED: u64 = 0;

struct Case {
    name: &'static str,
    path: PathBuf,
    min_runs: usize,
    /// How to create the folder when it is missing (None: it is committed).
    create: Option<&'static str>,
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; other non-flag arguments select models.
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let dir = std::env::var_os("DIFFSTYLE_BENCH_DIR").map_or(PathBuf::from("/tmp/diffstyle-bench"), PathBuf::from);
    let min_secs = env_f64("DIFFSTYLE_BENCH_MIN_SECS", 3.0);
    let profile = std::env::var("DIFFSTYLE_BENCH_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0");
    let cases = [
        Case {
            name: "tiny",
            path: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/method/model"),
            min_runs: 5,
            create: None,
        },
        Case {
            name: "ddpm256",
            path: dir.join("ddpm256"),
            min_runs: 3,
            create: Some("python3 tools/bench_torch_cpu.py --create-only --dir"),
        },
    ];
    let precision = match std::env::var("DIFFSTYLE_BENCH_PRECISION").as_deref() {
        Ok("bf16") => Precision::Bf16,
        Ok("f16") => Precision::F16,
        Ok("f32") | Err(_) => Precision::F32,
        Ok(other) => anyhow::bail!("DIFFSTYLE_BENCH_PRECISION={other}: expected f32, f16 or bf16"),
    };
    if filter.iter().any(|f| f == "conv3x3") {
        match std::env::var("DIFFSTYLE_BENCH_DEVICE").as_deref() {
            Ok("cpu") | Err(_) => bench_conv(&CpuBackend::from_env(0, precision)?, min_secs, precision)?,
            Ok(other) => println!("conv3x3: skipped on {other} (a CPU probe)"),
        }
    }
    for case in cases.iter().filter(|c| filter.is_empty() || filter.iter().any(|f| f == c.name)) {
        if !case.path.join("config.json").is_file() {
            println!(
                "{}: skipped, {} does not exist; create it with `{} {}` (or run tools/bench_cpu.sh)",
                case.name,
                case.path.display(),
                case.create.unwrap_or("?"),
                dir.display()
            );
            continue;
        }
        match std::env::var("DIFFSTYLE_BENCH_DEVICE").as_deref() {
            Ok("cpu") | Err(_) => run(&CpuBackend::from_env(0, precision)?, case, min_secs, profile, precision)?,
            Ok("emu") => run(&GpuBackend::new(EmuDevice::new(), precision), case, min_secs, profile, precision)?,
            Ok("cuda") => match CudaDevice::new(0) {
                Ok(d) => run(&GpuBackend::new(d, precision), case, min_secs, profile, precision)?,
                Err(e) => println!("{}: skipped, no usable GPU ({e:#})", case.name),
            },
            Ok(other) => anyhow::bail!("DIFFSTYLE_BENCH_DEVICE={other}: expected cpu, cuda or emu"),
        }
    }
    Ok(())
}

/// One 3x3 convolution, 256 -> 256 channels at 64x64, padding 1, random data.
fn bench_conv<B: Backend>(be: &B, min_secs: f64, precision: Precision) -> Result<()> {
    let (c, hw) = (256usize, 64usize);
    let rand = |seed: u64, n: usize| {
        let mut v = vec![0f32; n];
        fill_gaussian(seed, 0, 0, &mut v);
        v.iter_mut().for_each(|x| *x = precision.round(*x * 0.05));
        v
    };
    let w = be.upload_weight(&HostTensor::new(vec![c, c, 3, 3], rand(1, c * c * 9)), WeightKind::Conv)?;
    let bias = be.upload_weight(&HostTensor::new(vec![c], rand(2, c)), WeightKind::Vector)?;
    let (xb, ob) = (be.alloc(c * hw * hw)?, be.alloc(c * hw * hw)?);
    be.upload(Act::new(&xb, 0, 1, c, hw, hw), &rand(3, c * hw * hw))?;
    let p = Conv2d::<B> {
        x: Act::new(&xb, 0, 1, c, hw, hw).into(),
        w: &w,
        bias: &bias,
        k: 3,
        stride: 1,
        pad: [1; 4],
        upsample: false,
        temb: None,
        residual: None,
        out: Act::new(&ob, 0, 1, c, hw, hw),
    };
    be.conv2d(&p)?;
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 5 || start.elapsed().as_secs_f64() < min_secs.min(3.0) {
        times.push(be.time_ms(&mut || be.conv2d(&p))?);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let gflop = 2.0 * (c * c * 9 * hw * hw) as f64 / 1e9;
    println!("conv3x3: median {median:.3} ms over {} runs = {:.1} GFLOP/s", times.len(), gflop / (median / 1e3));
    let json = serde_json::json!({
        "model": "conv3x3",
        "ours_ms_median": (median * 1e3).round() / 1e3,
        "runs": times.len(),
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "gflop": gflop,
        "gflops": gflop / (median / 1e3),
        "backend": be.describe(),
        "precision": precision.name(),
    });
    println!("{json}");
    Ok(())
}

fn run<B: Backend>(be: &B, case: &Case, min_secs: f64, profile: bool, precision: Precision) -> Result<()> {
    if !profile {
        return bench(be, case, min_secs, precision);
    }
    let timed = Profiled::new(be, if precision == Precision::F32 { 4 } else { 2 });
    bench(&timed, case, min_secs, precision)?;
    let (by_kind, by_op) = timed.tables(1);
    let total: f64 = by_kind.iter().map(|r| r.ms).sum();
    println!("profile (all timed ops, warm-up and measured forwards together; {total:.1} ms in ops):");
    print!("{}", format_rows("by op kind", &by_kind));
    print!("{}", format_rows("by op kind and output resolution", &by_op));
    Ok(())
}

fn bench<B: Backend>(be: &B, case: &Case, min_secs: f64, precision: Precision) -> Result<()> {
    let t0 = Instant::now();
    let model = load_model(&case.path, None, None).with_context(|| format!("{}: loading", case.name))?;
    let params = model.param_count();
    let unet = UNet::new(be, &model, precision)?;
    drop(model);
    let load_s = t0.elapsed().as_secs_f64();
    let ws = unet.workspace(be, 1, 1)?;
    let arch = &unet.arch;
    let mut x = vec![0f32; arch.in_channels * arch.sample_size * arch.sample_size];
    fill_gaussian(SEED, 0, 0, &mut x);
    be.upload(unet.x(&ws), &x)?;

    // Warm-up: touches the arena and the weights once.
    unet.forward(be, &ws, &[TIMESTEP])?;
    be.sync()?;

    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < case.min_runs || start.elapsed().as_secs_f64() < min_secs {
        times.push(be.time_ms(&mut || unet.forward(be, &ws, &[TIMESTEP]))?);
    }
    let eps = be.download(unet.eps(&ws, 1))?;
    let eps_max = eps.iter().fold(0f32, |m, v| if v.is_nan() { f32::NAN } else { m.max(v.abs()) });
    anyhow::ensure!(eps_max.is_finite(), "{}: eps is not finite", case.name);

    times.sort_by(f64::total_cmp);
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        0.5 * (times[times.len() / 2 - 1] + times[times.len() / 2])
    };
    let (enc, dec) = unet.graph.flops();
    let gflop = (enc + dec) / 1e9;
    let gflops = gflop / (median / 1e3);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{}: {} params, {:.2} GFLOP/forward; loaded in {:.2} s; median {:.3} ms over {} runs \
         (min {:.3}, max {:.3}) = {:.1} GFLOP/s on {} threads; max|eps| {:.4}",
        case.name,
        params,
        gflop,
        load_s,
        median,
        times.len(),
        times[0],
        times[times.len() - 1],
        gflops,
        threads,
        eps_max
    );
    let json = serde_json::json!({
        "model": case.name,
        "ours_ms_median": (median * 1e3).round() / 1e3,
        "runs": times.len(),
        "threads": threads,
        "gflop": gflop,
        "gflops": gflops,
        "max_abs_eps": eps_max,
        "backend": be.describe(),
        "precision": precision.name(),
    });
    println!("{json}");
    Ok(())
}
