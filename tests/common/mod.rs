//! Shared by the whole-method parity tests of every backend: the PyTorch goldens of
//! `tests/fixtures/method` and one case run on any backend.
#![allow(dead_code)]

pub mod http;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use diffstyle::backend::Backend;
use diffstyle::diffusion::method::{Engine, Inversion, Settings};
use diffstyle::diffusion::steps::{Finished, JobId, Stepper, Task};
use diffstyle::diffusion::timesteps::seq;
use diffstyle::dtype::Precision;

use diffstyle::model::unet::UNet;
use diffstyle::model::weights::load_model;
use diffstyle::tensor::{psnr_model_space, rel_l2};
use safetensors::SafeTensors;

/// The method fixtures: under the crate that built this test, or, for a test binary
/// carried to another machine (tools/gpu_check.sh), under the current directory.
pub fn fixtures() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/method");
    if built.is_dir() {
        built
    } else {
        PathBuf::from("tests/fixtures/method")
    }
}

/// The ADM method fixtures (tests/fixtures/method_adm), located as `fixtures()`.
pub fn fixtures_adm() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/method_adm");
    if built.is_dir() {
        built
    } else {
        PathBuf::from("tests/fixtures/method_adm")
    }
}

/// The model of a fixture tree: a diffusers folder, or (ADM) model.safetensors + model.json.
pub fn fixture_model(root: &Path) -> diffstyle::model::weights::LoadedModel {
    let dir = root.join("model");
    if dir.join("model.json").is_file() {
        load_model(&dir.join("model.safetensors"), Some(&dir.join("model.json")), None).unwrap()
    } else {
        load_model(&dir, None, None).unwrap()
    }
}

pub fn tensor(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("golden has no `{name}`"));
    t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[derive(serde::Deserialize)]
struct CaseSettings {
    gamma: f32,
    t_edit: i64,
    inv_steps: usize,
    gen_steps: usize,
    replace_steps: usize,
    t_boost: i64,
    dt_lambda: f32,
    dt_end: i64,
    omega: f32,
    seed: u64,
    mask: Option<String>,
}

// The bounds of the tests against the PyTorch goldens and the CPU oracle, one place for
// the CPU, emulated and real-GPU tests. Why these values: kernels/README.md
// ("Tolerances"); tests/gpu_emu.rs checks that they hold with `MARGIN` on the
// emulator's FMA copy (a GPU's kind of rounding).
/// Method cases in f32: PSNR of the output against the golden (dB).
pub const MIN_PSNR_F32: f64 = 40.0;
/// Method cases with 16-bit weights.
pub const MIN_PSNR_16BIT: f64 = 30.0;
/// Inversion (x_T and the h trajectory) against the golden in f32: relative L2.
pub const INVERSION_BOUND_F32: f64 = 1e-4;
/// The whole method through the emulated kernels against the CPU oracle, both f32, at
/// a few steps (tests/gpu_emu.rs, the branch runs): relative L2 of every result.
/// Measured <= 1.5e-5 (sums in another order over ~16 U-Net passes); a kernel that
/// reads or writes one wrong element gives errors of order 1e-2 and more.
pub const METHOD_VS_ORACLE_F32: f64 = 1e-4;
/// One U-Net forward against the CPU oracle's f32: relative L2 per weight precision.
pub const FORWARD_BOUNDS: [(Precision, f64); 3] =
    [(Precision::F32, 1e-4), (Precision::Bf16, 3e-2), (Precision::F16, 1e-2)];
/// The factor by which an error must stay under its bound on the FMA model (on PSNR:
/// 20 log10 of it in dB).
pub const MARGIN: f64 = diffstyle::backend::gpu::emu::FMA_MARGIN;

/// One U-Net forward at t = 500 of `x` on `be` with weights stored at `p`: eps.
pub fn forward_on<B: Backend>(
    be: &B,
    model: &diffstyle::model::weights::LoadedModel,
    p: Precision,
    x: &[f32],
) -> Vec<f32> {
    let unet = UNet::new(be, model, p).unwrap();
    let ws = unet.workspace(be, 1, 1).unwrap();
    be.upload(unet.x(&ws), x).unwrap();
    unet.forward(be, &ws, &[500.0]).unwrap();
    be.download(unet.eps(&ws, 1)).unwrap()
}

/// A fixed input in [-1, 1) for one sample of `model`.
pub fn forward_input(model: &diffstyle::model::weights::LoadedModel) -> Vec<f32> {
    let len = model.arch.in_channels * model.arch.sample_size * model.arch.sample_size;
    (0..len).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect()
}

/// Runs one case on `be` with weights stored at `precision`; returns the PSNR of the
/// output against the golden, asserting `min_psnr` (and, in f32, the inversion's
/// closeness to the golden trajectory).
pub fn run_case_on<B: Backend>(be: &B, precision: Precision, name: &str, min_psnr: f64) -> f64 {
    run_case_in(be, precision, &fixtures(), name, min_psnr)
}

/// As `run_case_on`, for the cases of the fixture tree `root`.
pub fn run_case_in<B: Backend>(be: &B, precision: Precision, root: &Path, name: &str, min_psnr: f64) -> f64 {
    run_case_margin(be, precision, root, name, min_psnr, 1.0)
}

/// As `run_case_in`, each bound tightened by `margin` (errors divided by it, the PSNR
/// raised by 20 log10 of it).
pub fn run_case_margin<B: Backend>(
    be: &B,
    precision: Precision,
    root: &Path,
    name: &str,
    min_psnr: f64,
    margin: f64,
) -> f64 {
    let min_psnr = min_psnr + 20.0 * margin.log10();
    let inversion_bound = INVERSION_BOUND_F32 / margin;
    let dir = root.join(name);
    let cs: CaseSettings = serde_json::from_str(&std::fs::read_to_string(dir.join("settings.json")).unwrap()).unwrap();
    let s = Settings {
        gamma: cs.gamma,
        t_edit: cs.t_edit,
        inv_steps: cs.inv_steps,
        gen_steps: cs.gen_steps,
        replace_steps: cs.replace_steps,
        t_boost: cs.t_boost,
        dt_lambda: cs.dt_lambda,
        dt_end: cs.dt_end,
        omega: cs.omega,
        seed: cs.seed,
    };
    let model = fixture_model(root);
    s.validate(&model.schedule).unwrap();
    let size = model.arch.sample_size;
    let unet = UNet::new(be, &model, precision).unwrap();
    let mut eng = Engine::new(be, &unet, &model.schedule).unwrap();
    let content = diffstyle::io::image::load_image(&dir.join("content.png"), size).unwrap().data;
    let style = diffstyle::io::image::load_image(&dir.join("style.png"), size).unwrap().data;
    let mask = cs.mask.map(|m| diffstyle::io::mask::load_mask(&dir.join(m), model.arch.h_size()).unwrap());

    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let gold = SafeTensors::deserialize(&bytes).unwrap();

    let ci = eng.invert(&content, s.inv_steps, &mut || {}).unwrap();
    let si = eng.invert(&style, s.inv_steps, &mut || {}).unwrap();
    let keys: Vec<i64> = tensor(&gold, "content_h_keys").iter().map(|&k| k as i64).collect();
    assert_eq!(ci.keys, keys, "{name}: h keys");
    // The golden keeps the h of a few rows of the trajectory (tools/dsref/rows.py).
    let per = ci.h.len() / keys.len();
    let h_rows: Vec<f32> = tensor(&gold, "content_h_rows")
        .iter()
        .flat_map(|&r| ci.h[r as usize * per..(r as usize + 1) * per].iter().copied())
        .collect();
    let e_h = rel_l2(&h_rows, &tensor(&gold, "content_h"));
    let e_c = rel_l2(&ci.x_t, &tensor(&gold, "content_xT"));
    let e_s = rel_l2(&si.x_t, &tensor(&gold, "style_xT"));
    eprintln!(
        "{name} on {} ({precision:?}): inversion rel. L2 h {e_h:.2e}, content {e_c:.2e}, style {e_s:.2e}",
        be.name()
    );
    if precision == Precision::F32 {
        assert!(
            e_h < inversion_bound && e_c < inversion_bound && e_s < inversion_bound,
            "{name}: inversion rel. L2 h {e_h:e}, content {e_c:e}, style {e_s:e}"
        );
    }

    let x = eng.transfer(&si.x_t, &ci, &s, mask.as_deref(), &mut || {}).unwrap();
    let want = tensor(&gold, "x0");
    let psnr = psnr_model_space(&x, &want);
    eprintln!(
        "{name} on {} ({precision:?}): PSNR {psnr:.1} dB, rel. L2 {:.2e}, counts {:?}",
        be.name(),
        rel_l2(&x, &want),
        eng.counts
    );
    assert!(psnr >= min_psnr, "{name}: PSNR {psnr:.1} dB < {min_psnr} dB against the PyTorch reference");

    // The work done: one encoder per U-Net evaluation, a second decoder only where h
    // is mixed (the authors run it at every injection-capable step), and with omega the
    // calibrated rerun at mixed steps only.
    let gen = seq(s.gen_steps);
    let replace = if s.replace_steps == 0 { gen.clone() } else { seq(s.replace_steps) };
    let mixed = gen.iter().filter(|i| replace.contains(i) && **i >= s.t_edit).count();
    let reruns = if s.omega != 0.0 { mixed } else { 0 };
    let encoders = 2 * (s.inv_steps - 1) + s.gen_steps + reruns;
    assert_eq!(eng.counts.mixed_steps, mixed, "{name}: mixed steps");
    assert_eq!(eng.counts.encoder, encoders, "{name}: encoder passes");
    assert_eq!(eng.counts.decoder, encoders + mixed, "{name}: decoder passes");
    psnr
}

/// Pairs run side by side in one batch give exactly what each gives alone: a full
/// batch of 3 pairs and a padded batch (2 pairs in an engine of 3), with and without
/// calibration and a mask, with noisy and mixed steps (6 generation steps: 3 of each;
/// any difference shows at the first step that has it). Returns the largest difference.
pub fn batched_pairs_equal_single<B: Backend>(be: &B, precision: Precision) -> f32 {
    let dir = fixtures().join("defaults");
    let model = load_model(&fixtures().join("model"), None, None).unwrap();
    let size = model.arch.sample_size;
    let unet = UNet::new(be, &model, precision).unwrap();
    let a = diffstyle::io::image::load_image(&dir.join("content.png"), size).unwrap().data;
    let b = diffstyle::io::image::load_image(&dir.join("style.png"), size).unwrap().data;
    let mix: Vec<f32> = a.iter().zip(&b).map(|(x, y)| 0.5 * (x - y)).collect();
    let hs = model.arch.h_size();
    let mask: Vec<f32> = (0..hs * hs).map(|i| if i % hs < hs / 2 { 1.0 } else { 0.25 }).collect();
    let base = Settings { inv_steps: 4, gen_steps: 6, replace_steps: 6, t_boost: 500, ..Settings::default() };
    let runs = [(base.clone(), None), (Settings { omega: 0.7, ..base.clone() }, Some(mask.as_slice()))];

    let mut single = Engine::new(be, &unet, &model.schedule).unwrap();
    let mut batched = Engine::with_batch(be, &unet, &model.schedule, 3).unwrap();
    let images = [&a, &b, &mix];
    let inv1: Vec<Inversion> = images.iter().map(|x| single.invert(x, base.inv_steps, &mut || {}).unwrap()).collect();
    let inv3 = batched.invert_batch(&[&a, &b, &mix], base.inv_steps, &mut || {}).unwrap();
    let mut worst = 0f32;
    let mut diff = |x: &[f32], y: &[f32], what: &str| {
        assert_eq!(x.len(), y.len(), "{what}");
        let d = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(x.iter().all(|v| v.is_finite()), "{what}: not finite");
        worst = worst.max(d);
        d
    };
    for (k, (one, three)) in inv1.iter().zip(&inv3).enumerate() {
        assert_eq!(one.keys, three.keys, "image {k}: keys");
        let (dh, dx) = (diff(&one.h, &three.h, "h"), diff(&one.x_t, &three.x_t, "x_t"));
        eprintln!("inversion of image {k}: batch 3 vs alone: max |h| diff {dh:e}, max |x_T| diff {dx:e}");
    }
    // (content, style) pairs: 0 <- 1, 1 <- 2, 2 <- 0.
    let pairs = [(0usize, 1usize), (1, 2), (2, 0)];
    for (s, m) in &runs {
        let alone: Vec<Vec<f32>> =
            pairs.iter().map(|&(c, st)| single.transfer(&inv1[st].x_t, &inv1[c], s, *m, &mut || {}).unwrap()).collect();
        for n in [3, 2] {
            let styles: Vec<&[f32]> = pairs[..n].iter().map(|&(_, st)| inv1[st].x_t.as_slice()).collect();
            let contents: Vec<&Inversion> = pairs[..n].iter().map(|&(c, _)| &inv1[c]).collect();
            let got = batched.transfer_batch(&styles, &contents, s, *m, &mut || {}).unwrap();
            assert_eq!(got.len(), n);
            for (p, (g, w)) in got.iter().zip(&alone).enumerate() {
                let d = diff(g, w, "pair");
                eprintln!("omega {} pair {p} of {n} in an engine of 3: max |diff| vs alone {d:e}", s.omega);
            }
        }
        let distinct = alone[0].iter().zip(&alone[1]).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(distinct > 0.1, "different pairs gave the same image (max diff {distinct})");
    }
    worst
}

/// The largest |a - b| over elements whose bits differ (1e-30 at least, so that any
/// difference shows).
fn max_bits_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (p, q)| if p.to_bits() == q.to_bits() { m } else { m.max((p - q).abs().max(1e-30)) })
}

/// Runs `tasks` (each admitted at its step number of the stepper's loop; `cancel`: the
/// task indices removed at a step) and returns every finished task's result.
/// Runs `tasks` (admitted at their step) on `st`, cancelling `(step, task)` and holding
/// `(from, to, task)` out of the steps in [from, to); the results by task.
pub fn run_steps<B: Backend>(
    st: &mut Stepper<'_, B>,
    tasks: &[(usize, Task)],
    cancel: &[(usize, usize)],
    hold: &[(usize, usize, usize)],
) -> HashMap<usize, Finished> {
    let mut ids: HashMap<JobId, usize> = HashMap::new();
    let mut by_task: HashMap<usize, JobId> = HashMap::new();
    let mut out = HashMap::new();
    let mut ticks = 0usize;
    for it in 0.. {
        for (k, (at, task)) in tasks.iter().enumerate() {
            if *at == it {
                let id = st.admit(task.clone()).unwrap().expect("a free lane");
                ids.insert(id, k);
                by_task.insert(k, id);
            }
        }
        for &(at, k) in cancel {
            if at == it {
                assert!(st.cancel(by_task[&k]), "task {k} was running");
                ids.remove(&by_task[&k]);
            }
        }
        for &(from, to, k) in hold {
            if from == it || to == it {
                assert!(st.hold(by_task[&k], from == it), "task {k} was running");
            }
        }
        if st.active() == 0 && tasks.iter().all(|(at, _)| *at <= it) {
            break;
        }
        for (id, r) in st.step(&mut |_| ticks += 1).unwrap() {
            out.insert(ids.remove(&id).expect("a known job"), r.unwrap());
        }
    }
    assert!(ticks > 0);
    out
}

/// The step scheduler's check (issue 25) on `be`: transfers with different knobs, masks
/// and lengths joining a running set at different steps, an inversion among them and one
/// transfer cancelled midway; each finished job must give exactly the bits `Engine` gives
/// for it alone.
pub fn steps_equal_alone<B: Backend>(be: &B) {
    let dir = fixtures().join("defaults");
    let model = load_model(&fixtures().join("model"), None, None).unwrap();
    let size = model.arch.sample_size;
    let unet = UNet::new(be, &model, Precision::F32).unwrap();
    let a = diffstyle::io::image::load_image(&dir.join("content.png"), size).unwrap().data;
    let b = diffstyle::io::image::load_image(&dir.join("style.png"), size).unwrap().data;
    let mix: Vec<f32> = a.iter().zip(&b).map(|(x, y)| 0.5 * (x - y)).collect();
    let hs = model.arch.h_size();
    let mask: Arc<[f32]> = (0..hs * hs).map(|i| if i % hs < hs / 2 { 1.0 } else { 0.25 }).collect();

    // Alone, by Engine: the inversions, then one transfer per settings.
    let mut eng = Engine::new(be, &unet, &model.schedule).unwrap();
    let inv: Vec<Arc<Inversion>> =
        [&a, &b, &mix].iter().map(|x| Arc::new(eng.invert(x, 4, &mut || {}).unwrap())).collect();
    let base = Settings { inv_steps: 4, gen_steps: 6, replace_steps: 6, t_boost: 500, ..Settings::default() };
    // (settings, mask, content image, style image)
    type Run = (Settings, Option<Arc<[f32]>>, usize, usize);
    let runs: Vec<Run> = vec![
        (base.clone(), None, 0, 1),
        (Settings { omega: 0.7, gamma: 0.6, ..base.clone() }, Some(mask.clone()), 1, 2),
        (Settings { dt_lambda: 0.8, dt_end: 600, t_edit: 200, gen_steps: 9, ..base.clone() }, None, 2, 0),
        (Settings { gen_steps: 8, replace_steps: 0, t_boost: 0, seed: 7, ..base.clone() }, Some(mask.clone()), 0, 2),
    ];
    let alone: Vec<Vec<f32>> = runs
        .iter()
        .map(|(s, m, c, st)| eng.transfer(&inv[*st].x_t, &inv[*c], s, m.as_deref(), &mut || {}).unwrap())
        .collect();

    // Together: transfers joining at steps 0, 0, 2 and 5, an inversion at step 1, a
    // transfer cancelled at step 3, and two held out of some steps; 5 lanes, so the set
    // is full at step 2.
    let transfer = |k: usize| {
        let (s, m, c, st) = &runs[k];
        Task::Transfer {
            style_xt: inv[*st].x_t.clone().into(),
            content: inv[*c].clone(),
            settings: s.clone(),
            mask: m.clone(),
        }
    };
    let tasks = vec![
        (0, transfer(0)),
        (0, transfer(1)),
        (1, Task::Invert { x0: mix.clone().into(), steps: 4 }),
        (2, transfer(2)),
        (2, transfer(3)),
        (5, transfer(0)),
    ];
    let mut st = Stepper::new(be, &unet, &model.schedule, 5).unwrap();
    // Task 1 is held out of steps 1-3 and the inversion out of step 2.
    let out = run_steps(&mut st, &tasks, &[(3, 4)], &[(1, 4, 1), (2, 3, 2)]);
    assert_eq!(out.len(), 5, "every task but the cancelled one finished");
    let want = [Some(&alone[0]), Some(&alone[1]), None, Some(&alone[2]), None, Some(&alone[0])];
    for (k, w) in want.iter().enumerate() {
        match (out.get(&k), w) {
            (Some(Finished::Generated(x)), Some(w)) => {
                assert_eq!(max_bits_diff(x, w), 0.0, "task {k}: the transfer differs from Engine's alone")
            }
            (Some(Finished::Inverted(got)), None) => {
                assert_eq!(got.keys, inv[2].keys);
                assert_eq!(max_bits_diff(&got.h, &inv[2].h), 0.0, "the inversion's h differs");
                assert_eq!(max_bits_diff(&got.x_t, &inv[2].x_t), 0.0, "the inversion's x_T differs");
            }
            (None, None) => assert_eq!(k, 4, "only the cancelled task has no result"),
            _ => panic!("task {k}: unexpected result"),
        }
    }
    // Distinct settings gave distinct images (the comparison above could not pass by
    // everything being the same).
    assert!(max_bits_diff(&alone[0], &alone[1]) > 0.1 && max_bits_diff(&alone[0], &alone[2]) > 0.1);
    assert_eq!(st.active(), 0);
}
