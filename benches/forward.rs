//! U-Net forward benchmark on the CPU backend (batch 1, f32, timestep 500).
//!
//! Models:
//! * `tiny`: the committed `tests/fixtures/method/model` (3 levels, 32x32);
//! * `ddpm256`: `$DIFFSTYLE_BENCH_DIR/ddpm256` (default `/tmp/diffstyle-bench/ddpm256`),
//!   google/ddpm-celebahq-256's architecture with random weights, made by
//!   `python3 tools/bench_torch_cpu.py --create-only`; skipped when absent.
//!
//! For each: `load_model`, `UNet` on `CpuBackend::new(0)`, workspace (1, 1), a random x,
//! one warm-up forward, then forwards until at least `min_runs` (5; 3 for ddpm256) runs
//! and at least `DIFFSTYLE_BENCH_MIN_SECS` (3) seconds are timed. Prints the median,
//! GFLOP/s from `Graph::flops()`, max|eps|, and a JSON line for `tools/bench_cpu.sh`.
//!
//! `cargo bench --bench forward [-- tiny|ddpm256 ...]`; with `DIFFSTYLE_BENCH_PROFILE=1`
//! the forwards run through a wrapper backend that times every op and prints where the
//! time goes by op kind and resolution (the wall time then includes the wrapper's
//! bookkeeping, which is negligible next to the ops).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use diffstyle::backend::cpu::CpuBackend;
use diffstyle::backend::{Act, Backend, Cat, Conv2d, DdimStep, WeightKind};
use diffstyle::diffusion::rng::fill_gaussian;
use diffstyle::model::unet::{Precision, UNet};
use diffstyle::model::weights::load_model;
use diffstyle::tensor::HostTensor;

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
        let be = CpuBackend::new(0);
        if profile {
            let timed = Timed::new(be);
            bench(&timed, case, min_secs)?;
            timed.report();
        } else {
            bench(&be, case, min_secs)?;
        }
    }
    Ok(())
}

fn bench<B: Backend>(be: &B, case: &Case, min_secs: f64) -> Result<()> {
    let t0 = Instant::now();
    let model = load_model(&case.path, None, None).with_context(|| format!("{}: loading", case.name))?;
    let params = model.param_count();
    let unet = UNet::new(be, &model, Precision::F32)?;
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
        let t = Instant::now();
        unet.forward(be, &ws, &[TIMESTEP])?;
        be.sync()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
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
        "backend": be.name(),
    });
    println!("{json}");
    Ok(())
}

// ---------------------------------------------------------------------------------
// Profiling: a backend that delegates to another and times every op.

#[derive(Default, Clone, Copy)]
struct Stat {
    secs: f64,
    flops: f64,
    calls: usize,
}

struct Timed<B> {
    inner: B,
    stats: RefCell<BTreeMap<String, Stat>>,
}

impl<B: Backend> Timed<B> {
    fn new(inner: B) -> Self {
        Self { inner, stats: RefCell::new(BTreeMap::new()) }
    }

    fn time<T>(&self, key: impl FnOnce() -> String, flops: f64, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let r = f()?;
        self.inner.sync()?;
        let secs = t.elapsed().as_secs_f64();
        let mut stats = self.stats.borrow_mut();
        let s = stats.entry(key()).or_default();
        s.secs += secs;
        s.flops += flops;
        s.calls += 1;
        Ok(r)
    }

    fn report(&self) {
        let stats = self.stats.borrow();
        let total: f64 = stats.values().map(|s| s.secs).sum();
        let print = |title: &str, rows: Vec<(String, Stat)>| {
            println!("  {title}");
            println!("    {:<28} {:>6} {:>10} {:>6} {:>9} {:>9}", "op", "calls", "ms", "%", "GFLOP", "GFLOP/s");
            for (k, s) in rows {
                println!(
                    "    {:<28} {:>6} {:>10.1} {:>6.1} {:>9.2} {:>9.1}",
                    k,
                    s.calls,
                    s.secs * 1e3,
                    100.0 * s.secs / total,
                    s.flops / 1e9,
                    if s.secs > 0.0 { s.flops / 1e9 / s.secs } else { 0.0 }
                );
            }
        };
        let mut by_kind: BTreeMap<String, Stat> = BTreeMap::new();
        for (k, s) in stats.iter() {
            let e = by_kind.entry(k.split(" @").next().unwrap_or(k).to_string()).or_default();
            e.secs += s.secs;
            e.flops += s.flops;
            e.calls += s.calls;
        }
        let sorted = |m: &BTreeMap<String, Stat>| {
            let mut v: Vec<(String, Stat)> = m.iter().map(|(k, s)| (k.clone(), *s)).collect();
            v.sort_by(|a, b| b.1.secs.total_cmp(&a.1.secs));
            v
        };
        println!("profile (all timed ops, warm-up and measured forwards together; {:.1} ms in ops):", total * 1e3);
        print("by op kind", sorted(&by_kind));
        print("by op kind and output resolution", sorted(&stats));
    }
}

fn res<T>(a: &Act<'_, T>) -> String {
    format!("{}x{}", a.h, a.w)
}

impl<B: Backend> Backend for Timed<B> {
    type Buf = B::Buf;
    type Weight = B::Weight;

    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn alloc(&self, len: usize) -> Result<Self::Buf> {
        self.inner.alloc(len)
    }
    fn upload(&self, dst: Act<'_, Self::Buf>, data: &[f32]) -> Result<()> {
        self.inner.upload(dst, data)
    }
    fn download(&self, src: Act<'_, Self::Buf>) -> Result<Vec<f32>> {
        self.inner.download(src)
    }
    fn upload_weight(&self, t: &HostTensor, kind: WeightKind) -> Result<Self::Weight> {
        self.inner.upload_weight(t, kind)
    }
    fn sync(&self) -> Result<()> {
        self.inner.sync()
    }
    fn copy(&self, src: Act<'_, Self::Buf>, dst: Act<'_, Self::Buf>) -> Result<()> {
        self.time(|| "copy".into(), 0.0, || self.inner.copy(src, dst))
    }
    fn timestep_embedding(&self, t: &[f32], flip: bool, shift: f32, out: Act<'_, Self::Buf>) -> Result<()> {
        let flops = 4.0 * out.len() as f64;
        self.time(|| "time_embedding".into(), flops, || self.inner.timestep_embedding(t, flip, shift, out))
    }
    fn linear(
        &self,
        x: Act<'_, Self::Buf>,
        w: &Self::Weight,
        b: &Self::Weight,
        silu_input: bool,
        out: Act<'_, Self::Buf>,
    ) -> Result<()> {
        let flops = 2.0 * (out.len() * x.sample_len()) as f64;
        self.time(|| "linear".into(), flops, || self.inner.linear(x, w, b, silu_input, out))
    }
    fn group_norm(
        &self,
        x: Cat<'_, Self::Buf>,
        gamma: &Self::Weight,
        beta: &Self::Weight,
        groups: usize,
        eps: f32,
        silu: bool,
        out: Act<'_, Self::Buf>,
    ) -> Result<()> {
        let key = || format!("group_norm{} @{}", if silu { "+silu" } else { "" }, res(&out));
        self.time(key, 8.0 * out.len() as f64, || self.inner.group_norm(x, gamma, beta, groups, eps, silu, out))
    }
    fn group_norm_film(
        &self,
        x: Act<'_, Self::Buf>,
        gamma: &Self::Weight,
        beta: &Self::Weight,
        groups: usize,
        eps: f32,
        film: Act<'_, Self::Buf>,
        silu: bool,
        out: Act<'_, Self::Buf>,
    ) -> Result<()> {
        let key = || format!("group_norm+film{} @{}", if silu { "+silu" } else { "" }, res(&out));
        self.time(key, 10.0 * out.len() as f64, || {
            self.inner.group_norm_film(x, gamma, beta, groups, eps, film, silu, out)
        })
    }
    fn resample(&self, x: Act<'_, Self::Buf>, up: bool, out: Act<'_, Self::Buf>) -> Result<()> {
        let key = || format!("{} @{}", if up { "upsample" } else { "avg_pool" }, res(&out));
        self.time(key, 4.0 * out.len() as f64, || self.inner.resample(x, up, out))
    }
    fn conv2d(&self, p: &Conv2d<'_, Self>) -> Result<()> {
        let cin = p.x.channels();
        let flops = 2.0 * (p.out.len() * cin * p.k * p.k) as f64;
        let key = || {
            let mut k = format!("conv{}x{}", p.k, p.k);
            if p.stride != 1 {
                k.push_str(&format!("/s{}", p.stride));
            }
            if p.upsample {
                k.push_str("+up2");
            }
            format!("{k} @{}", res(&p.out))
        };
        let q = Conv2d::<B> {
            x: p.x,
            w: p.w,
            bias: p.bias,
            k: p.k,
            stride: p.stride,
            pad: p.pad,
            upsample: p.upsample,
            temb: p.temb,
            residual: p.residual,
            out: p.out,
        };
        self.time(key, flops, || self.inner.conv2d(&q))
    }
    fn attention(&self, qkv: Act<'_, Self::Buf>, heads: usize, out: Act<'_, Self::Buf>) -> Result<()> {
        let tokens = (out.h * out.w) as f64;
        let flops = 4.0 * out.n as f64 * tokens * tokens * out.c as f64;
        self.time(|| format!("attention @{}", res(&out)), flops, || self.inner.attention(qkv, heads, out))
    }
    fn hspace_mix(
        &self,
        h: Act<'_, Self::Buf>,
        hc: Act<'_, Self::Buf>,
        gamma: f32,
        mask: Option<Act<'_, Self::Buf>>,
        out: Act<'_, Self::Buf>,
    ) -> Result<()> {
        self.time(|| "hspace_mix".into(), 0.0, || self.inner.hspace_mix(h, hc, gamma, mask, out))
    }
    fn ddim_step(&self, p: &DdimStep<'_, Self::Buf>) -> Result<()> {
        self.time(|| "ddim_step".into(), 0.0, || self.inner.ddim_step(p))
    }
    fn calibrate(
        &self,
        x: Act<'_, Self::Buf>,
        eps: Act<'_, Self::Buf>,
        eps_mod: Act<'_, Self::Buf>,
        a: f32,
        omega: f32,
        out: Act<'_, Self::Buf>,
    ) -> Result<()> {
        self.time(|| "calibrate".into(), 0.0, || self.inner.calibrate(x, eps, eps_mod, a, omega, out))
    }
}
