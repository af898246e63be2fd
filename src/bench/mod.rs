//! `diffstyle bench`: device-timed U-Net forwards (whole, encoder, decoder) at several
//! batch sizes and whole DiffStyle pairs, per weight precision, with the inputs and
//! outputs written next to the numbers so that a framework baseline can be run on the
//! same data and checked against ours (tools/bench_torch_gpu.py, tools/bench_report.py).
//!
//! Every timed region is one sampler-step bracket (`begin_step` .. `end_step`), i.e. one
//! graph replay on a GPU, exactly as the engine runs it; times are device events on a
//! GPU and the host clock around synchronisations elsewhere. Medians after warm-up.

pub mod profile;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use serde::Serialize;

use crate::backend::Backend;
use crate::diffusion::method::{Engine, Preset};
use crate::dtype::Precision;
use crate::rng::fill_gaussian;

use crate::model::unet::{UNet, Workspace};
use crate::model::weights::LoadedModel;

/// The timestep of the timed forwards (any value costs the same).
pub const T: f32 = 500.0;
/// Seed of the random U-Net inputs (sample k of a batch uses stream 0, counter k).
pub const SEED: u64 = 0;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOpts {
    pub out_dir: PathBuf,
    pub precisions: Vec<Precision>,
    pub batches: Vec<usize>,
    pub presets: Vec<Preset>,
    pub content: PathBuf,
    pub style: PathBuf,
    /// Batches of pairs for the throughput measurement (each pair with its own two
    /// inversions), run with `throughput_preset` in the first of `pair_precisions`.
    pub throughput: Vec<usize>,
    pub throughput_preset: Preset,
    /// Timed runs per measurement: at least `min_runs`, and at least `min_secs` seconds.
    pub min_runs: usize,
    pub min_secs: f64,
    pub warmup: usize,
    /// Precisions the pairs and the throughput batches run in (the forwards run in all).
    pub pair_precisions: Vec<Precision>,
    /// Also time every op of a batch-1 forward on its own (`profile.rs`).
    pub profile: bool,
}

/// Per-op times of a batch-1 forward (`profile.rs`), per forward.
#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    pub precision: String,
    pub runs: usize,
    /// Sum of the ops' own times (direct launches, no graph).
    pub ops_ms: f64,
    pub by_kind: Vec<profile::Row>,
    pub by_op: Vec<profile::Row>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    pub precision: String,
    pub batch: usize,
    pub ms: f64,
    pub ms_min: f64,
    pub ms_max: f64,
    pub runs: usize,
    pub tflops: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PairTiming {
    pub precision: String,
    pub preset: String,
    /// Seconds for the pair with the step graphs already built (the second run).
    pub s: f64,
    /// Seconds for the first run (graphs recorded and instantiated on the way).
    pub s_first: f64,
    pub inversions_s: f64,
    pub generation_s: f64,
    /// Whether the two runs gave bit-identical images.
    pub deterministic: bool,
    pub image: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub precision: String,
    pub preset: String,
    pub batch: usize,
    /// Seconds for the batch (second run): both inversions of every pair, then the
    /// generation.
    pub s: f64,
    pub pairs_per_s: f64,
}

/// Everything one precision yields.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PrecisionResult {
    pub precision: String,
    pub forward: Vec<Timing>,
    pub encoder: Vec<Timing>,
    pub decoder: Vec<Timing>,
    pub pair: Vec<PairTiming>,
    pub throughput: Vec<Throughput>,
    pub profile: Option<Profile>,
    /// Device bytes after uploading the weights (None on the CPU).
    pub weights_bytes: Option<usize>,
    /// Peak device bytes with the pair engine (batch 1) allocated and run.
    pub peak_pair_bytes: Option<usize>,
    /// Peak device bytes over the whole run (the largest forward batch included).
    pub peak_bytes: Option<usize>,
    pub device: String,
}

pub fn preset_name(p: Preset) -> &'static str {
    match p {
        Preset::InDomain => "in-domain",
        Preset::Harmonize => "harmonize",
        Preset::Fast => "fast",
    }
}

/// Median, min, max of `times` (not empty).
fn stats(times: &mut [f64]) -> (f64, f64, f64) {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median = if n % 2 == 1 { times[n / 2] } else { 0.5 * (times[n / 2 - 1] + times[n / 2]) };
    (median, times[0], times[n - 1])
}

/// The preprocessed inputs shared by every precision.
pub struct Inputs {
    pub content: Vec<f32>,
    pub style: Vec<f32>,
}

/// Writes `data` as raw little-endian f32 (the format the baseline script reads).
pub fn write_f32(path: &Path, data: &[f32]) -> Result<()> {
    crate::io::atomic::write_atomic(path, bytemuck::cast_slice(data))
}

/// The random U-Net input of batch `n`: sample k is `fill_gaussian(SEED, 0, k)`, so the
/// first sample of every batch is the same (and is what `x_b1.f32` holds).
pub fn random_x(n: usize, sample_len: usize) -> Vec<f32> {
    let mut x = vec![0f32; n * sample_len];
    for (k, s) in x.chunks_mut(sample_len).enumerate() {
        fill_gaussian(SEED, 0, k as u32, s);
    }
    x
}

/// Times `f` (one step bracket per run): `warmup` untimed runs, then runs until both
/// minimums are met.
fn time_runs<B: Backend>(be: &B, o: &BenchOpts, f: &mut dyn FnMut() -> Result<()>) -> Result<Vec<f64>> {
    let mut step = || -> Result<()> {
        be.begin_step()?;
        f()?;
        be.end_step()
    };
    for _ in 0..o.warmup {
        step()?;
    }
    be.sync()?;
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < o.min_runs.max(1) || start.elapsed().as_secs_f64() < o.min_secs {
        times.push(be.time_ms(&mut step)?);
    }
    Ok(times)
}

fn timing(precision: Precision, batch: usize, mut times: Vec<f64>, gflop: f64) -> Timing {
    let (ms, ms_min, ms_max) = stats(&mut times);
    Timing {
        precision: precision.name().into(),
        batch,
        ms,
        ms_min,
        ms_max,
        runs: times.len(),
        tflops: gflop * batch as f64 / ms / 1e3,
    }
}

/// Runs every measurement for one precision on `be` (a fresh backend).
pub fn run_on<B: Backend>(
    be: &B,
    model: &LoadedModel,
    precision: Precision,
    inputs: &Inputs,
    o: &BenchOpts,
    log: &mut dyn FnMut(&str),
) -> Result<PrecisionResult> {
    let pname = precision.name();
    let unet = UNet::new(be, model, precision)?;
    let mut r = PrecisionResult {
        precision: pname.into(),
        weights_bytes: be.peak_device_bytes(),
        device: be.describe(),
        ..Default::default()
    };
    let size = model.arch.sample_size;

    let pairs_here = o.pair_precisions.contains(&precision);
    // Pairs first, so that the peak they report is the batch-1 engine's.
    if pairs_here && !o.presets.is_empty() {
        let mut eng = Engine::new(be, &unet, &model.schedule)?;
        for &preset in &o.presets {
            let s = preset.settings();
            s.validate(&model.schedule)?;
            let mut run = || -> Result<(Vec<f32>, f64, f64)> {
                let t0 = Instant::now();
                let c = eng.invert(&inputs.content, s.inv_steps, &mut || ())?;
                let st = eng.invert(&inputs.style, s.inv_steps, &mut || ())?;
                let t1 = Instant::now();
                let x = eng.transfer(&st.x_t, &c, &s, None, &mut || ())?;
                Ok((x, (t1 - t0).as_secs_f64(), t1.elapsed().as_secs_f64()))
            };
            let (first, a0, b0) = run()?;
            let (x, inv, gen) = run()?;
            let image = format!("pair_{}_{pname}.png", preset_name(preset));
            crate::io::image::save_png(&o.out_dir.join(&image), &x, size, size)?;
            let p = PairTiming {
                precision: pname.into(),
                preset: preset_name(preset).into(),
                s: inv + gen,
                s_first: a0 + b0,
                inversions_s: inv,
                generation_s: gen,
                deterministic: first == x,
                image,
            };
            log(&format!("{pname} pair {}: {:.3} s (first run {:.3} s)", p.preset, p.s, p.s_first));
            r.pair.push(p);
        }
        r.peak_pair_bytes = be.peak_device_bytes();
    }

    // Throughput in the first pair precision only: its batches cost the most time.
    let throughput_here = o.pair_precisions.first() == Some(&precision);
    for &b in o.throughput.iter().filter(|_| throughput_here) {
        let s = o.throughput_preset.settings();
        s.validate(&model.schedule)?;
        let mut eng = Engine::with_batch(be, &unet, &model.schedule, b).with_context(|| format!("{b} pairs"))?;
        let (cs, ss) = (vec![inputs.content.as_slice(); b], vec![inputs.style.as_slice(); b]);
        let mut run = || -> Result<f64> {
            let t0 = Instant::now();
            let ci = eng.invert_batch(&cs, s.inv_steps, &mut || ())?;
            let si = eng.invert_batch(&ss, s.inv_steps, &mut || ())?;
            let xts: Vec<&[f32]> = si.iter().map(|i| i.x_t.as_slice()).collect();
            let conts: Vec<&crate::diffusion::method::Inversion> = ci.iter().collect();
            eng.transfer_batch(&xts, &conts, &s, None, &mut || ())?;
            Ok(t0.elapsed().as_secs_f64())
        };
        run()?;
        let secs = run()?;
        let t = Throughput {
            precision: pname.into(),
            preset: preset_name(o.throughput_preset).into(),
            batch: b,
            s: secs,
            pairs_per_s: b as f64 / secs,
        };
        log(&format!("{pname} {b} pairs ({}): {:.3} s, {:.2} pairs/s", t.preset, t.s, t.pairs_per_s));
        r.throughput.push(t);
    }

    let (enc_flop, dec_flop) = unet.graph.flops();
    let (enc_g, dec_g) = (enc_flop / 1e9, dec_flop / 1e9);
    for &b in &o.batches {
        ensure!(b >= 1, "batch sizes must be at least 1");
        let ws: Workspace<B> = unet.workspace(be, b, b).with_context(|| format!("batch {b}"))?;
        let x = unet.x(&ws);
        be.upload(x, &random_x(b, x.sample_len()))?;
        let t = vec![T; b];
        let fwd = time_runs(be, o, &mut || unet.forward(be, &ws, &t))?;
        let eps = be.download(unet.eps(&ws, b))?;
        ensure!(eps.iter().all(|v| v.is_finite()), "{pname} batch {b}: the U-Net output is not finite");
        if b == 1 {
            write_f32(&o.out_dir.join(format!("eps_{pname}_b1.f32")), &eps)?;
        }
        let enc = time_runs(be, o, &mut || unet.encode(be, &ws, &t))?;
        let dec = time_runs(be, o, &mut || unet.decode(be, &ws, b))?;
        let f = timing(precision, b, fwd, enc_g + dec_g);
        log(&format!("{pname} batch {b}: forward {:.3} ms ({:.3} TFLOP/s, {} runs)", f.ms, f.tflops, f.runs));
        r.forward.push(f);
        r.encoder.push(timing(precision, b, enc, enc_g));
        r.decoder.push(timing(precision, b, dec, dec_g));
    }
    r.peak_bytes = be.peak_device_bytes();

    if o.profile {
        // Last, after the peak was read: the profiled U-Net holds a second copy of the
        // weights.
        let runs = 3;
        let prof = profile::Profiled::new(be, if precision == Precision::F32 { 4 } else { 2 });
        let unet = UNet::new(&prof, model, precision)?;
        let ws = unet.workspace(&prof, 1, 1)?;
        let x = unet.x(&ws);
        prof.upload(x, &random_x(1, x.sample_len()))?;
        unet.forward(&prof, &ws, &[T])?;
        prof.reset();
        for _ in 0..runs {
            unet.forward(&prof, &ws, &[T])?;
        }
        let (by_kind, by_op) = prof.tables(runs);
        let ops_ms = by_kind.iter().map(|r| r.ms).sum();
        log(&format!("{pname} batch 1, each op timed on its own ({ops_ms:.3} ms in ops per forward):"));
        log(&profile::format_rows("by op kind", &by_kind));
        log(&profile::format_rows("by op kind and output resolution", &by_op));
        r.profile = Some(Profile { precision: pname.into(), runs, ops_ms, by_kind, by_op });
    }
    Ok(r)
}

/// `ours.json`: what the baselines script and the report read (tools/bench_torch_gpu.py,
/// tools/bench_report.py), for the precisions measured so far.
pub fn report_json(model: &LoadedModel, o: &BenchOpts, results: &[(&str, PrecisionResult)]) -> serde_json::Value {
    let size = model.arch.sample_size;
    let g = crate::model::graph::Graph::build(&model.arch);
    let (enc, dec) = g.flops();
    let by_prec = |f: &dyn Fn(&crate::bench::PrecisionResult) -> serde_json::Value| {
        serde_json::Value::Object(results.iter().map(|(p, r)| (p.to_string(), f(r))).collect())
    };
    let flat = |f: &dyn Fn(&crate::bench::PrecisionResult) -> serde_json::Value| {
        serde_json::Value::Array(
            results.iter().flat_map(|(_, r)| f(r).as_array().cloned().unwrap_or_default()).collect(),
        )
    };
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    serde_json::json!({
        "device": crate::bench::device_only(&results[0].1.device),
        "backend": results[0].1.device.clone(),
        "unix_time": unix,
        "model": {
            "source": model.source,
            "params": model.param_count(),
            "gflop_forward": (enc + dec) / 1e9,
            "gflop_encoder": enc / 1e9,
            "gflop_decoder": dec / 1e9,
            "sample_size": size,
            "weights_bytes": by_prec(&|r| serde_json::json!(r.weights_bytes)),
        },
        "forward": flat(&|r| serde_json::json!(r.forward)),
        "encoder": flat(&|r| serde_json::json!(r.encoder)),
        "decoder": flat(&|r| serde_json::json!(r.decoder)),
        "pair": flat(&|r| serde_json::json!(r.pair)),
        "throughput": flat(&|r| serde_json::json!(r.throughput)),
        "profile": serde_json::Value::Array(results.iter().filter_map(|(_, r)| r.profile.as_ref()).map(|p| serde_json::json!(p)).collect()),
        "peak_mem_bytes": by_prec(&|r| serde_json::json!(r.peak_pair_bytes.or(r.peak_bytes))),
        "peak_mem_bytes_all": by_prec(&|r| serde_json::json!(r.peak_bytes)),
        "settings": {
            "batches": o.batches, "min_runs": o.min_runs, "min_secs": o.min_secs, "warmup": o.warmup,
        },
        "inputs": {
            "t": crate::bench::T,
            "x": "x_b1.f32",
            "eps": by_prec(&|r| {
                serde_json::json!(r.forward.iter().any(|f| f.batch == 1).then(|| format!("eps_{}_b1.f32", r.precision)))
            }),
            "content": "content_x0.f32",
            "style": "style_x0.f32",
            "content_image": o.content.display().to_string(),
            "style_image": o.style.display().to_string(),
            "size": size,
        },
    })
}

/// `describe()` without the weight precision a GPU backend appends.
pub fn device_only(described: &str) -> &str {
    described.strip_suffix(" weights").and_then(|d| d.rsplit_once(", ")).map_or(described, |(d, _)| d)
}
