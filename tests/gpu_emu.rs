//! The GPU backend's kernels, run by the host emulator (`--device emu`), through the
//! whole method: every branch in f32 against the CPU oracle (which tests/method_parity.rs
//! holds to the PyTorch goldens), the FMA model against the goldens in f32 and with
//! bf16 / f16 weights on the tensor-core path, batches, graphs and the memory discipline
//! (no device allocation inside the step loop). Runs on every machine; no GPU needed.
//! What each test guards, and its time: tests/README.md.

mod common;

use std::path::Path;

use common::{
    fixtures, fixtures_adm, forward_input, forward_on, run_case_margin, FORWARD_BOUNDS, MARGIN, METHOD_VS_ORACLE_F32,
    MIN_PSNR_16BIT, MIN_PSNR_F32,
};
use diffstyle::backend::cpu::CpuBackend;
use diffstyle::backend::gpu::emu::{EmuChecks, EmuDevice};
use diffstyle::backend::gpu::GpuBackend;
use diffstyle::backend::Backend;
use diffstyle::diffusion::method::{Engine, Settings};
use diffstyle::dtype::Precision;

use diffstyle::model::unet::UNet;
use diffstyle::model::weights::load_model;
use diffstyle::tensor::rel_l2;

fn emu(p: Precision) -> GpuBackend<EmuDevice> {
    GpuBackend::new(EmuDevice::new(), p)
}

/// The transfers of the branch runs, named: between them every kind of generation
/// step the kernels see, at 10 steps each (inversions: 6 steps, so n_inv != n_gen).
/// The PyTorch goldens of each knob at full length check the CPU oracle
/// (tests/method_parity.rs); these runs check the kernels against that oracle.
fn branch_settings() -> Vec<(&'static str, Settings, bool)> {
    let base = Settings { inv_steps: 6, gen_steps: 10, ..Settings::default() };
    vec![
        // seq(4) within seq(10): injection-capable at 0, 333, 666, 999 only (injecting
        // without mixing below t_edit 400), noisy below 500, calibrated mixing, masked.
        ("mask + omega, replace < gen", Settings { replace_steps: 4, t_boost: 500, omega: 0.2, ..base.clone() }, true),
        // Every step injection-capable, the dt_lambda step coefficients, unmasked mixing.
        ("replace 0 + dt_lambda", Settings { replace_steps: 0, dt_lambda: 0.9985, ..base.clone() }, false),
        // Mixing only at t = 999, no noisy step (t_boost 0), another gamma.
        ("edit 999, no noise", Settings { gamma: 0.4, t_edit: 999, replace_steps: 10, t_boost: 0, ..base }, false),
    ]
}

/// Runs two inversions (content, style of `case`) and the transfers of
/// `branch_settings` on `be`, f32 weights; calls `tick` after every step. Returns each result by
/// name: each transfer, the content's x_T and h trajectory, the style's x_T.
fn branch_runs<B: Backend>(be: &B, root: &Path, case: &str, tick: &mut dyn FnMut()) -> Vec<(String, Vec<f32>)> {
    let model = common::fixture_model(root);
    let unet = UNet::new(be, &model, Precision::F32).unwrap();
    let mut eng = Engine::new(be, &unet, &model.schedule).unwrap();
    let size = model.arch.sample_size;
    let dir = root.join(case);
    let content = diffstyle::io::image::load_image(&dir.join("content.png"), size).unwrap().data;
    let style = diffstyle::io::image::load_image(&dir.join("style.png"), size).unwrap().data;
    let mask = diffstyle::io::mask::load_mask(&dir.join("mask.png"), model.arch.h_size()).unwrap();
    let runs = branch_settings();
    let ci = eng.invert(&content, runs[0].1.inv_steps, tick).unwrap();
    let si = eng.invert(&style, runs[0].1.inv_steps, tick).unwrap();
    let mut out = vec![];
    for (name, s, masked) in &runs {
        s.validate(&model.schedule).unwrap();
        let x = eng.transfer(&si.x_t, &ci, s, masked.then_some(mask.as_slice()), tick).unwrap();
        out.push((name.to_string(), x));
    }
    out.push(("content x_T".into(), ci.x_t));
    out.push(("content h".into(), ci.h));
    out.push(("style x_T".into(), si.x_t));
    out
}

/// Each result of `got` within `METHOD_VS_ORACLE_F32` of what the same inputs give on
/// the CPU backend.
fn assert_near_the_cpu_oracle(what: &str, got: &[(String, Vec<f32>)], root: &Path, case: &str) {
    let cpu = branch_runs(&CpuBackend::new(0), root, case, &mut || {});
    for ((name, g), (_, want)) in got.iter().zip(&cpu) {
        let e = rel_l2(g, want);
        eprintln!("{what}: {name}: rel. L2 vs the CPU oracle {e:.2e}");
        assert!(g.iter().all(|v| v.is_finite()), "{what}: {name}: not finite");
        assert!(
            e < METHOD_VS_ORACLE_F32,
            "{what}: {name}: rel. L2 {e:e} vs the CPU oracle >= {METHOD_VS_ORACLE_F32:e}"
        );
    }
}

/// The whole method through the kernels, every branch (see `branch_settings`), in f32:
/// - the results match the CPU oracle (masked, calibrated, noisy, dt_lambda and
///   injecting-only steps; the inversion's x_T and whole h trajectory);
/// - no device allocation inside any step loop (the arena, latents and trajectory are
///   allocated before the loops; an inversion allocates its h record once, before its
///   first step; the first transfer its trajectory buffer);
/// - steps run as replayed graphs (parameter blocks updated per step) give exactly
///   what direct launches give, and each distinct step shape is instantiated once.
#[test]
fn every_branch_matches_the_oracle_without_allocating_in_steps() {
    let root = fixtures();
    let graphs = emu(Precision::F32);
    let mut counts = vec![];
    let with = branch_runs(&graphs, &root, "mask", &mut || counts.push(graphs.alloc_count()));
    assert_near_the_cpu_oracle("DDPM on the emulator", &with, &root, "mask");

    let runs = branch_settings();
    let inv = runs[0].1.inv_steps - 1;
    let mut loops = vec![("inversion 1", inv), ("inversion 2", inv)];
    loops.extend(runs.iter().map(|(name, s, _)| (*name, s.gen_steps)));
    assert_eq!(counts.len(), loops.iter().map(|l| l.1).sum::<usize>(), "one tick per step");
    let mut at = 0;
    for (what, n) in loops {
        let c = &counts[at..at + n];
        assert!(c.iter().all(|&k| k == c[0]), "{what}: device allocations inside the loop: {c:?}");
        at += n;
    }
    eprintln!("device allocations per step constant; peak device memory {} bytes", graphs.peak_bytes());

    let direct = emu(Precision::F32).without_graphs();
    let without = branch_runs(&direct, &root, "mask", &mut || {});
    assert!(with == without, "graph replay changed the results");
    let st = graphs.graph_stats();
    eprintln!("graphs: {st:?}");
    assert_eq!(direct.graph_stats().created, 0);
    // inversion, plain, noisy, injecting (no mix), mixing, calibrated, masked variants.
    assert!(st.created >= 4 && st.created <= 12, "graphs created: {}", st.created);
    assert_eq!(st.created + st.replayed, counts.len(), "every step runs as one graph");
    assert!(st.updated_nodes > 0, "per-step parameters must be rewritten");
}

/// The ADM family's kernels (FiLM group norm, resampling, multi-head attention with the
/// legacy QKV order, learned sigma) through the whole method, every branch, against
/// the CPU oracle.
#[test]
fn adm_every_branch_matches_the_oracle() {
    let root = fixtures_adm();
    let got = branch_runs(&emu(Precision::F32), &root, "adm_mask_omega", &mut || {});
    assert_near_the_cpu_oracle("ADM on the emulator", &got, &root, "adm_mask_omega");
}

/// Pairs packed in one batch equal the same pairs run alone through the kernels.
#[test]
fn batched_pairs_equal_single() {
    let worst = common::batched_pairs_equal_single(&emu(Precision::F32), Precision::F32);
    assert_eq!(worst, 0.0, "batched pairs differ from single pairs by up to {worst:e}");
}

/// The step scheduler runs a mixed set of jobs (joins, a cancel, an inversion among
/// transfers of other knobs and masks) through the kernels, each job giving exactly the
/// bits of the kernels' own run of it alone.
#[test]
fn step_scheduler_mixed_set() {
    common::steps_equal_alone(&emu(Precision::F32));
}

/// One whole U-Net forward of each family (DDPM with attention, ADM with FiLM,
/// resampling and the legacy QKV order), in f32 and bf16 (the tensor-core, cp.async and
/// ldmatrix paths), runs clean under every emulator check and gives the very bits of
/// the unchecked run.
#[test]
fn forward_runs_clean_under_every_check() {
    let ddpm = load_model(&fixtures().join("model"), None, None).unwrap();
    let adm_dir = fixtures_adm().join("model");
    let adm = load_model(&adm_dir.join("model.safetensors"), Some(&adm_dir.join("model.json")), None).unwrap();
    for model in [&ddpm, &adm] {
        for p in [Precision::F32, Precision::Bf16] {
            let checked = GpuBackend::new(EmuDevice::with_checks(EmuChecks { seed: 3, ..EmuChecks::all() }), p);
            let want = forward_on(&emu(p), model, p, &forward_input(model));
            assert_eq!(forward_on(&checked, model, p, &forward_input(model)), want, "{} {p:?}", model.source);
        }
    }
}

// The tolerance model: the real-GPU tests' bounds (tests/common) hold with `MARGIN` on
// the emulator's FMA copy, whose rounding is a GPU's kind (nvcc contracts a*b+c; the
// plain emulator and the CPU oracle round each operation), so that a correct kernel is
// not failed on hardware by a bound nobody calibrated (kernels/README.md, "Tolerances").

fn fma(p: Precision) -> GpuBackend<EmuDevice> {
    GpuBackend::new(EmuDevice::with_checks(EmuChecks::fma()), p)
}

macro_rules! fma_method_cases {
    ($($name:ident: $p:expr, $min_psnr:expr;)*) => {
        $(
            /// The real-GPU tests' method cases (the whole method; here n_inv != n_gen)
            /// on the FMA model, with margin.
            #[test]
            fn $name() {
                run_case_margin(&fma($p), $p, &fixtures(), "inv_ne_gen", $min_psnr, MARGIN);
            }
        )*
    };
}

fma_method_cases! {
    fma_model_method_f32: Precision::F32, MIN_PSNR_F32;
    fma_model_method_bf16: Precision::Bf16, MIN_PSNR_16BIT;
    fma_model_method_f16: Precision::F16, MIN_PSNR_16BIT;
}

/// The U-Net forward bounds (for the 256x256 model on a GPU; here the tiny models of
/// both families stand in: fewer layers, smaller errors, hence the margin) hold on the
/// FMA model, which must really round differently from the plain copy.
#[test]
fn fma_model_forwards() {
    let adm = fixtures_adm().join("model");
    let models = [
        ("ddpm", load_model(&fixtures().join("model"), None, None).unwrap()),
        ("adm", load_model(&adm.join("model.safetensors"), Some(&adm.join("model.json")), None).unwrap()),
    ];
    for (name, model) in &models {
        let x = forward_input(model);
        let cpu = forward_on(&diffstyle::backend::cpu::CpuBackend::new(2), model, Precision::F32, &x);
        for (p, bound) in FORWARD_BOUNDS {
            let got = forward_on(&fma(p), model, p, &x);
            let e = diffstyle::tensor::rel_l2(&got, &cpu);
            eprintln!("{name} forward {p:?} on the FMA model vs CPU f32: rel. L2 {e:.2e} (bound {bound:e})");
            assert!(e * MARGIN < bound, "{name} {p:?}: rel. L2 {e:e} not {MARGIN}x under {bound:e}");
        }
        let plain = forward_on(&emu(Precision::F32), model, Precision::F32, &x);
        assert_ne!(
            forward_on(&fma(Precision::F32), model, Precision::F32, &x),
            plain,
            "{name}: the FMA copy rounds as the plain one"
        );
    }
}

/// A device whose kernels "fault" from the `at`-th launch on: the fault shows only at
/// the next synchronisation, as on a GPU.
struct Faulting {
    inner: EmuDevice,
    launches: std::sync::atomic::AtomicUsize,
    at: usize,
}

impl diffstyle::backend::gpu::device::Device for Faulting {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn l2_cache_bytes(&self) -> usize {
        self.inner.l2_cache_bytes()
    }
    fn alloc(&self, bytes: usize) -> anyhow::Result<u64> {
        self.inner.alloc(bytes)
    }
    fn free(&self, ptr: u64) {
        self.inner.free(ptr)
    }
    fn htod(&self, dst: u64, src: &[u8]) -> anyhow::Result<()> {
        self.inner.htod(dst, src)
    }
    fn dtoh(&self, src: u64, dst: &mut [u8]) -> anyhow::Result<()> {
        self.inner.dtoh(src, dst)
    }
    fn fill_u32(&self, dst: u64, value: u32, count: usize) -> anyhow::Result<()> {
        self.inner.fill_u32(dst, value, count)
    }
    fn launch(&self, kernel: &str, grid: [u32; 3], block: [u32; 3], smem: u32, params: &[u8]) -> anyhow::Result<()> {
        self.launches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.launch(kernel, grid, block, smem, params)
    }
    fn sync(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.launches.load(std::sync::atomic::Ordering::SeqCst) < self.at, "an illegal memory access");
        Ok(())
    }
    fn graph_create(&self, launches: &[diffstyle::backend::gpu::device::Launch]) -> anyhow::Result<u64> {
        self.inner.graph_create(launches)
    }
    fn graph_set_params(&self, g: u64, index: usize, params: &[u8]) -> anyhow::Result<()> {
        self.inner.graph_set_params(g, index, params)
    }
    fn graph_launch(&self, g: u64) -> anyhow::Result<()> {
        self.inner.graph_launch(g)
    }
    fn graph_destroy(&self, g: u64) {
        self.inner.graph_destroy(g)
    }
}

/// `DIFFSTYLE_CUDA_SYNC=1` (`GpuBackend::synchronous`): no graphs, the same bits, and a
/// fault is reported by the launch of the kernel that caused it, by name.
#[test]
fn synchronous_mode_names_the_faulting_kernel() {
    use diffstyle::backend::Backend;
    let model = load_model(&fixtures().join("model"), None, None).unwrap();
    let run = |be: &GpuBackend<Faulting>| -> anyhow::Result<Vec<f32>> {
        let unet = UNet::new(be, &model, Precision::F32)?;
        let ws = unet.workspace(be, 1, 1)?;
        let x = vec![0.25f32; unet.x(&ws).len()];
        be.upload(unet.x(&ws), &x)?;
        be.begin_step()?;
        unet.forward(be, &ws, &[500.0])?;
        be.end_step()?;
        be.download(unet.eps(&ws, 1))
    };
    let dev = |at| Faulting { inner: EmuDevice::new(), launches: Default::default(), at };
    let plain = GpuBackend::new(dev(usize::MAX), Precision::F32);
    let sync = GpuBackend::new(dev(usize::MAX), Precision::F32).synchronous();
    assert_eq!(run(&sync).unwrap(), run(&plain).unwrap());
    assert_eq!(sync.graph_stats().created, 0, "no graphs in synchronous mode");
    let e = format!("{:#}", run(&GpuBackend::new(dev(5), Precision::F32).synchronous()).unwrap_err());
    assert!(e.contains("kernel ") && e.contains("failed") && e.contains("an illegal memory access"), "{e}");
}
