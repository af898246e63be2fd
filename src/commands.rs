//! What the CLI's subcommands do, as library functions (main.rs only parses).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};

use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::cuda::CudaDevice;
use crate::backend::gpu::emu::EmuDevice;
use crate::backend::gpu::GpuBackend;
use crate::backend::Backend;
use crate::diffusion::method::{Engine, Inversion, Preset, Settings};
use crate::dtype::Precision;
use crate::io::cache::{self, CacheKey};
use crate::io::safetensors::Entry;
use crate::model::graph::Graph;
use crate::model::plan::Plan;
use crate::model::schedule::Schedule;

use crate::model::unet::UNet;
use crate::model::weights::{load_model, LoadedModel};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// The f32 CPU backend.
    Cpu,
    /// An NVIDIA GPU (compute capability 8.0+) through the hand-written kernels.
    Cuda,
    /// The same kernels run by the host emulator: slow, for checking kernels without a GPU.
    Emu,
    /// A GPU when one is usable, else the CPU.
    Auto,
}

pub struct Common {
    pub device: DeviceChoice,
    pub precision: Precision,
    pub quiet: bool,
    pub verbose: bool,
    pub threads: usize,
}

pub struct ModelArgs {
    pub model: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub arch: Option<String>,
}

/// Knobs as given on the command line; `None` = the preset's value.
pub struct Knobs {
    pub preset: Preset,
    pub gamma: Option<f32>,
    pub t_edit: Option<i64>,
    pub inv_steps: Option<usize>,
    pub gen_steps: Option<usize>,
    pub replace_steps: Option<usize>,
    pub t_boost: Option<i64>,
    pub dt_lambda: Option<f32>,
    pub dt_end: Option<i64>,
    pub omega: Option<f32>,
    pub seed: Option<u64>,
}

impl Knobs {
    pub fn settings(&self) -> Settings {
        let p = self.preset.settings();
        Settings {
            gamma: self.gamma.unwrap_or(p.gamma),
            t_edit: self.t_edit.unwrap_or(p.t_edit),
            inv_steps: self.inv_steps.unwrap_or(p.inv_steps),
            gen_steps: self.gen_steps.unwrap_or(p.gen_steps),
            replace_steps: self.replace_steps.unwrap_or(p.replace_steps),
            t_boost: self.t_boost.unwrap_or(p.t_boost),
            dt_lambda: self.dt_lambda.unwrap_or(p.dt_lambda),
            dt_end: self.dt_end.unwrap_or(p.dt_end),
            omega: self.omega.unwrap_or(p.omega),
            seed: self.seed.unwrap_or(p.seed),
        }
    }
}

/// The backend `--device` asks for.
enum Picked {
    Cpu(CpuBackend),
    Emu(GpuBackend<EmuDevice>),
    Cuda(GpuBackend<CudaDevice>),
}

fn pick(c: &Common) -> Result<Picked> {
    Ok(match c.device {
        DeviceChoice::Cpu => Picked::Cpu(CpuBackend::new(c.threads)),
        DeviceChoice::Emu => Picked::Emu(GpuBackend::new(EmuDevice::new(), c.precision)),
        DeviceChoice::Cuda => Picked::Cuda(GpuBackend::new(CudaDevice::new(0).context("--device cuda")?, c.precision)),
        DeviceChoice::Auto => match CudaDevice::new(0) {
            Ok(d) => Picked::Cuda(GpuBackend::new(d, c.precision)),
            Err(e) => {
                if c.verbose {
                    eprintln!("--device auto: using the CPU ({e:#})");
                }
                Picked::Cpu(CpuBackend::new(c.threads))
            }
        },
    })
}

/// Runs `$body` with `$be` bound to the picked backend (each arm is monomorphised).
macro_rules! on_backend {
    ($c:expr, |$be:ident| $body:expr) => {
        match pick($c)? {
            Picked::Cpu(b) => {
                let $be = &b;
                $body
            }
            Picked::Emu(b) => {
                let $be = &b;
                $body
            }
            Picked::Cuda(b) => {
                let $be = &b;
                $body
            }
        }
    };
}

/// The engine (activation arena, latent slots) for `unet`. Built before any input is
/// decoded at the model's resolution, so that an architecture too large for memory is
/// an error naming the model rather than an abort in the image code.
fn engine<'a, B: Backend>(be: &'a B, unet: &'a UNet<B>, m: &'a LoadedModel) -> Result<Engine<'a, B>> {
    Engine::new(be, unet, &m.schedule).with_context(|| format!("model {}", m.source))
}

/// `--verbose`: where the run happened and, on a GPU, its peak device memory.
fn report_device<B: Backend>(c: &Common, be: &B) {
    if c.verbose {
        match be.peak_device_bytes() {
            Some(b) => eprintln!("device: {}; peak device memory {:.1} MiB", be.describe(), b as f64 / 1048576.0),
            None => eprintln!("device: {}", be.describe()),
        }
    }
}

fn model(m: &ModelArgs) -> Result<LoadedModel> {
    let path = m.model.as_deref().context("--model is required")?;
    load_model(path, m.config.as_deref(), m.arch.as_deref())
}

/// A progress bar on stderr, hidden with --quiet or when stderr is not a terminal.
struct Progress(indicatif::ProgressBar);

impl Progress {
    fn new(c: &Common, len: usize, what: &str) -> Self {
        let bar = if c.quiet || !std::io::stderr().is_terminal() {
            indicatif::ProgressBar::hidden()
        } else {
            let b = indicatif::ProgressBar::new(len as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>24} [{bar:30}] {pos}/{len} steps  {elapsed_precise}  {rate}  eta {eta}",
                )
                .expect("valid template")
                .with_key("rate", |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1} steps/s", st.per_sec());
                })
                .progress_chars("=> "),
            );
            b
        };
        bar.set_message(what.to_string());
        Self(bar)
    }
    fn tick(&self) {
        self.0.inc(1);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "input".into())
}

fn cache_key(m: &LoadedModel, precision: Precision, inv_steps: usize) -> CacheKey {
    CacheKey { model_hash: format!("{}-{precision:?}", m.hash).to_lowercase(), inv_steps }
}

fn shapes(m: &LoadedModel) -> ([usize; 3], [usize; 3]) {
    let a = &m.arch;
    ([a.in_channels, a.sample_size, a.sample_size], [a.h_channels(), a.h_size(), a.h_size()])
}

/// An image to invert, or a cache to load: decided and checked before any work.
enum Input {
    Image(Vec<f32>),
    Cached(Inversion),
}

fn read_input(path: &Path, m: &LoadedModel, key: &CacheKey) -> Result<Input> {
    let (shape, h_shape) = shapes(m);
    if cache::is_cache(path) {
        let c = cache::load(path, key, shape, h_shape)?;
        let inv = Inversion::from_parts(c.x0, c.x_t, c.h, c.keys, key.inv_steps)
            .with_context(|| path.display().to_string())?;
        Ok(Input::Cached(inv))
    } else {
        Ok(Input::Image(crate::io::image::load_image(path, m.arch.sample_size)?.data))
    }
}

fn check_parent(out: &Path) -> Result<()> {
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    ensure!(parent.is_dir(), "{}: the output folder {} does not exist", out.display(), parent.display());
    ensure!(!out.is_dir(), "{}: is a folder, expected an output file name", out.display());
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn transfer(
    c: &Common,
    m: &ModelArgs,
    contents: &[PathBuf],
    styles: &[PathBuf],
    out: &Path,
    mask: Option<&Path>,
    dump: Option<&Path>,
    knobs: &Knobs,
    batch: usize,
) -> Result<()> {
    on_backend!(c, |be| transfer_on(be, c, m, contents, styles, out, mask, dump, knobs, batch))
}

#[allow(clippy::too_many_arguments)]
fn transfer_on<B: Backend>(
    be: &B,
    c: &Common,
    m: &ModelArgs,
    contents: &[PathBuf],
    styles: &[PathBuf],
    out: &Path,
    mask: Option<&Path>,
    dump: Option<&Path>,
    knobs: &Knobs,
    batch: usize,
) -> Result<()> {
    let s = knobs.settings();
    ensure!(batch >= 1, "--batch must be at least 1");
    let model = model(m)?;
    s.validate(&model.schedule)?;
    let pairs = contents.len() * styles.len();
    ensure!(dump.is_none() || pairs == 1, "--dump-tensor needs exactly one content and one style");
    if pairs == 1 {
        check_parent(out)?;
    } else {
        ensure!(!out.is_file(), "{}: with {pairs} pairs --out must be a folder, not a file", out.display());
    }
    if let Some(d) = dump {
        check_parent(d)?;
    }
    let unet = UNet::new(be, &model, c.precision)?;
    // No larger than the work: a batch slot without a pair would only be padding.
    let batch = batch.min(pairs);
    let mut eng = Engine::with_batch(be, &unet, &model.schedule, batch)
        .with_context(|| format!("model {} with --batch {batch}", model.source))?;
    let key = cache_key(&model, c.precision, s.inv_steps);
    // Every input is read and checked before any compute.
    let mut inputs: HashMap<PathBuf, Input> = HashMap::new();
    for p in contents.iter().chain(styles) {
        if !inputs.contains_key(p) {
            inputs.insert(p.clone(), read_input(p, &model, &key)?);
        }
    }
    let hs = model.arch.h_size();
    let mask = mask.map(|p| crate::io::mask::load_mask(p, hs)).transpose()?;

    let t0 = Instant::now();
    let mut inverted: HashMap<PathBuf, Inversion> = HashMap::new();
    let mut to_invert = vec![];
    for (p, input) in inputs {
        match input {
            Input::Cached(inv) => {
                inverted.insert(p, inv);
            }
            Input::Image(x0) => to_invert.push((p, x0)),
        }
    }
    for chunk in to_invert.chunks(batch) {
        let names: Vec<String> = chunk.iter().map(|(p, _)| stem(p)).collect();
        let bar = Progress::new(c, s.inv_steps - 1, &format!("invert {}", names.join(", ")));
        let x0s: Vec<&[f32]> = chunk.iter().map(|(_, x)| x.as_slice()).collect();
        let invs = eng.invert_batch(&x0s, s.inv_steps, &mut || bar.tick())?;
        for ((p, _), inv) in chunk.iter().zip(invs) {
            inverted.insert(p.clone(), inv);
        }
    }
    let t_inv = t0.elapsed();
    let inv_forwards = eng.counts.encoder;
    if pairs > 1 {
        std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create the output folder", out.display()))?;
    }
    let size = model.arch.sample_size;
    let mut results = Vec::with_capacity(pairs);
    let t1 = Instant::now();
    let all: Vec<(&PathBuf, &PathBuf)> = contents.iter().flat_map(|cp| styles.iter().map(move |sp| (cp, sp))).collect();
    for (k, chunk) in all.chunks(batch).enumerate() {
        let first = k * batch + 1;
        let what = if chunk.len() == 1 {
            format!("pair {first}/{pairs}")
        } else {
            format!("pairs {first}-{}/{pairs}", first + chunk.len() - 1)
        };
        let bar = Progress::new(c, s.gen_steps, &what);
        let styles_xt: Vec<&[f32]> = chunk.iter().map(|(_, sp)| inverted[*sp].x_t.as_slice()).collect();
        let conts: Vec<&Inversion> = chunk.iter().map(|(cp, _)| &inverted[*cp]).collect();
        let xs = eng.transfer_batch(&styles_xt, &conts, &s, mask.as_deref(), &mut || bar.tick())?;
        drop(bar);
        for ((cp, sp), x) in chunk.iter().zip(xs) {
            let file = if pairs == 1 {
                out.to_path_buf()
            } else {
                out.join(format!("content_{}_style_{}.png", stem(cp), stem(sp)))
            };
            crate::io::image::save_png(&file, &x, size, size)?;
            if let Some(d) = dump {
                write_latent(d, &x, [1, model.arch.in_channels, size, size])?;
            }
            results.push(x);
        }
    }
    if pairs > 1 {
        let st: Vec<&[f32]> = styles.iter().map(|p| inverted[p].x0.as_slice()).collect();
        let ct: Vec<&[f32]> = contents.iter().map(|p| inverted[p].x0.as_slice()).collect();
        let rs: Vec<&[f32]> = results.iter().map(|r| r.as_slice()).collect();
        let (grid, gh, gw) = crate::io::grid::authors_grid(&st, &ct, &rs, size);
        crate::io::image::save_png(&out.join("grid.png"), &grid, gh, gw)?;
    }
    if c.verbose {
        let cnt = &eng.counts;
        // An inversion step is one U-Net forward plus a DDIM update: close to the
        // forward's own time.
        let per_fwd = if inv_forwards > 0 {
            format!(" ({:.2} ms per step)", t_inv.as_secs_f64() * 1e3 / inv_forwards as f64)
        } else {
            String::new()
        };
        eprintln!(
            "inversions {:.2} s{per_fwd}, generation {:.2} s ({:.2} s per pair); encoder passes {} ({} in inversions), decoder passes {}, mixed steps {}, noisy steps {}",
            t_inv.as_secs_f64(),
            t1.elapsed().as_secs_f64(),
            t1.elapsed().as_secs_f64() / pairs as f64,
            cnt.encoder,
            inv_forwards,
            cnt.decoder,
            cnt.mixed_steps,
            cnt.noisy_steps
        );
    }
    report_device(c, be);
    Ok(())
}

/// The final latent as f32 NCHW safetensors under the key `x0`.
fn write_latent(path: &Path, x: &[f32], shape: [usize; 4]) -> Result<()> {
    crate::io::safetensors::write(path, &[Entry::f32("x0", shape.to_vec(), x)], None)
}

pub fn invert(c: &Common, m: &ModelArgs, image: &Path, out: &Path, inv_steps: usize) -> Result<()> {
    on_backend!(c, |be| invert_on(be, c, m, image, out, inv_steps))
}

fn invert_on<B: Backend>(be: &B, c: &Common, m: &ModelArgs, image: &Path, out: &Path, inv_steps: usize) -> Result<()> {
    let model = model(m)?;
    let s = Settings { inv_steps, ..Settings::default() };
    s.validate(&model.schedule)?;
    check_parent(out)?;
    let unet = UNet::new(be, &model, c.precision)?;
    let mut eng = engine(be, &unet, &model)?;
    let x0 = crate::io::image::load_image(image, model.arch.sample_size)?.data;
    let bar = Progress::new(c, inv_steps - 1, &format!("invert {}", stem(image)));
    let inv = eng.invert(&x0, inv_steps, &mut || bar.tick())?;
    drop(bar);
    let (shape, h_shape) = shapes(&model);
    let rec = cache::Cached { x0: inv.x0, x_t: inv.x_t, h: inv.h, keys: inv.keys };
    cache::save(out, &rec, &cache_key(&model, c.precision, inv_steps), &image.display().to_string(), shape, h_shape)?;
    report_device(c, be);
    Ok(())
}

pub fn sample(c: &Common, m: &ModelArgs, n: usize, steps: usize, seed: u64, out: &Path) -> Result<()> {
    on_backend!(c, |be| sample_on(be, c, m, n, steps, seed, out))
}

#[allow(clippy::too_many_arguments)]
fn sample_on<B: Backend>(
    be: &B,
    c: &Common,
    m: &ModelArgs,
    n: usize,
    steps: usize,
    seed: u64,
    out: &Path,
) -> Result<()> {
    let model = model(m)?;
    ensure!(n >= 1, "-n must be at least 1");
    let s = Settings { gen_steps: steps, ..Settings::default() };
    s.validate(&model.schedule)?;
    check_parent(out)?;
    let unet = UNet::new(be, &model, c.precision)?;
    let mut eng = engine(be, &unet, &model)?;
    let mut imgs = vec![];
    for k in 0..n {
        let bar = Progress::new(c, steps, &format!("sample {}/{n}", k + 1));
        let z = eng.noise(seed, k as u32);
        imgs.push(eng.ddim(&z, steps, &mut || bar.tick())?);
    }
    let size = model.arch.sample_size;
    let refs: Vec<&[f32]> = imgs.iter().map(|v| v.as_slice()).collect();
    let nrow = (n as f64).sqrt().ceil() as usize;
    let (grid, gh, gw) = crate::io::grid::make_grid(&refs, size, nrow, 1);
    crate::io::image::save_png(out, &grid, gh, gw)?;
    report_device(c, be);
    Ok(())
}

/// The architecture and schedule that --config / --arch describe.
fn described_arch(m: &ModelArgs) -> Result<crate::model::config::ModelConfig> {
    match (&m.config, &m.arch) {
        (Some(path), None) => crate::model::config::load_config_file(path),
        (None, Some(name)) => crate::model::config::preset(name),
        _ => bail!("give exactly one of --config / --arch"),
    }
}

pub fn random_model(m: &ModelArgs, seed: u64, out: &Path) -> Result<()> {
    check_parent(out)?;
    let cfg = described_arch(m)?;
    let model = LoadedModel::random(&cfg.arch, cfg.schedule_or_default(), seed);
    let tensors: Vec<Entry> =
        model.tensors.iter().map(|(name, t)| Entry::f32(name, t.shape.clone(), &t.data)).collect();
    crate::io::safetensors::write(out, &tensors, None)?;
    println!(
        "{}: {} parameters of random weights (seed {seed}) for {}",
        out.display(),
        model.param_count(),
        cfg.source
    );
    Ok(())
}

pub fn info(c: &Common, m: &ModelArgs, show_plan: bool) -> Result<()> {
    let loaded = m.model.is_some().then(|| model(m)).transpose()?;
    let (arch, params, hash, betas) = if let Some(model) = &loaded {
        let params: usize = model.tensors.values().map(|t| t.numel()).sum();
        (model.arch.clone(), params, Some(model.hash.clone()), None)
    } else {
        let cfg = described_arch(m).context("info needs --model, or exactly one of --config / --arch")?;
        let arch = cfg.arch;
        let params =
            crate::model::weights::expected_tensors(&arch).iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        (arch, params, None, cfg.betas)
    };
    let g = Graph::build(&arch);
    let (enc, dec) = g.flops();
    match &arch.adm {
        None => println!("architecture: DDPM U-Net (diffusers UNet2DModel layout)"),
        Some(a) => {
            println!("architecture: ADM U-Net (guided-diffusion UNetModel layout)");
            println!(
                "  model_channels {}, FiLM norm {}, res-block resampling {}, {} QKV order; eps = first {} of {} outputs",
                a.model_channels,
                a.use_scale_shift_norm,
                a.resblock_updown,
                if a.use_new_attention_order { "new" } else { "legacy" },
                arch.eps_channels(),
                arch.out_channels
            );
        }
    }
    println!(
        "  sample size {}x{}, {} -> {} channels",
        arch.sample_size, arch.sample_size, arch.in_channels, arch.out_channels
    );
    println!("  block_out_channels {:?}, {} res blocks per level", arch.block_out_channels, arch.layers_per_block);
    println!("  attention: down {:?}, mid {}, up {:?}", arch.down_attention, arch.mid_attention, arch.up_attention);
    let heads = match (arch.attention_head_dim, &arch.adm) {
        (Some(d), _) => format!("{d} channels per head"),
        (None, Some(a)) => format!("{} heads (decoder {})", a.num_heads, a.num_heads_upsample),
        (None, None) => "1 head per layer".to_string(),
    };
    println!(
        "  {heads}; GroupNorm({}, eps {:e}); downsample padding {}",
        arch.norm_num_groups, arch.norm_eps, arch.downsample_padding
    );
    println!(
        "  time embedding: {} sinusoids (flip_sin_to_cos {}, freq_shift {}) -> {}",
        arch.time_proj_dim(),
        arch.flip_sin_to_cos,
        arch.freq_shift,
        arch.time_embed_dim
    );
    println!("  h-space: {} x {} x {}", arch.h_channels(), arch.h_size(), arch.h_size());
    if let Some(h) = hash {
        println!("  weights hash {h}");
    }
    println!("parameters: {params} ({:.1} M)", params as f64 / 1e6);
    println!(
        "GFLOP per forward (batch 1): {:.1} total = {:.1} encoder (incl. middle block) + {:.1} decoder",
        (enc + dec) / 1e9,
        enc / 1e9,
        dec / 1e9
    );
    println!(
        "activation traffic per forward (batch 1, f32, each op reading its inputs and writing its output once): {:.1} MiB",
        g.activation_traffic() * 4.0 / 1048576.0
    );
    let plan = Plan::new(&g, 1, 2)?;
    if show_plan {
        print!("{}", plan.describe(&g));
    } else {
        let total: usize = plan.lens.iter().sum();
        println!(
            "activation arena (1 encoder + 2 decoders): {:.1} MiB planned, {:.1} MiB without reuse ({} buffers; --plan lists them)",
            plan.arena_len as f64 * 4.0 / 1048576.0,
            total as f64 * 4.0 / 1048576.0,
            g.values.len()
        );
    }
    // The CPU backend computes in f32; a GPU keeps f16/bf16 weights at 2 bytes.
    let bytes = if c.precision == Precision::F32 { 4.0 } else { 2.0 };
    println!("weights: {:.1} MiB as {:?}", params as f64 * bytes / 1048576.0, c.precision);
    let on_gpu = match c.device {
        DeviceChoice::Cpu => false,
        DeviceChoice::Emu | DeviceChoice::Cuda => true,
        DeviceChoice::Auto => CudaDevice::new(0).is_ok(),
    };
    if on_gpu {
        // Measured, not estimated: upload the weights (random ones for a bare
        // architecture) and allocate the engine on the device.
        let model = match loaded {
            Some(model) => model,
            None => {
                let sched = betas.map_or_else(Schedule::ddpm_linear, |b| Schedule::from_betas(&b));
                LoadedModel::random(&arch, sched, 0)
            }
        };
        on_backend!(c, |be| device_memory(be, &model, c.precision))?;
    }
    Ok(())
}

/// Peak device memory of the weights plus an engine (arena for one encoder and two
/// decoders, latent slots), as `transfer` allocates them before its first step.
fn device_memory<B: Backend>(be: &B, model: &LoadedModel, precision: Precision) -> Result<()> {
    let unet = UNet::new(be, model, precision)?;
    let _eng = engine(be, &unet, model)?;
    if let Some(bytes) = be.peak_device_bytes() {
        println!(
            "device memory on {}: {:.1} MiB peak (weights + activation arena + latents; the content trajectory adds {:.1} MiB per 50 inversion steps)",
            be.describe(),
            bytes as f64 / 1048576.0,
            (49 * model.arch.h_channels() * model.arch.h_size() * model.arch.h_size() * 4) as f64 / 1048576.0
        );
    }
    Ok(())
}

/// `diffstyle bench`: every measurement of `crate::bench` for each precision (a fresh
/// backend each), written to `<out_dir>/ours.json` with the inputs and outputs the
/// baselines are checked against.
pub fn bench(c: &Common, m: &ModelArgs, o: &crate::bench::BenchOpts) -> Result<()> {
    use crate::bench::{run_on, write_f32, Inputs};
    ensure!(!o.precisions.is_empty(), "--precisions is empty");
    let model = model(m)?;
    let size = model.arch.sample_size;
    for p in [&o.content, &o.style] {
        ensure!(p.is_file(), "{}: no such image", p.display());
    }
    let inputs = Inputs {
        content: crate::io::image::load_image(&o.content, size)?.data,
        style: crate::io::image::load_image(&o.style, size)?.data,
    };
    std::fs::create_dir_all(&o.out_dir)
        .with_context(|| format!("{}: cannot create the output folder", o.out_dir.display()))?;
    write_f32(&o.out_dir.join("content_x0.f32"), &inputs.content)?;
    write_f32(&o.out_dir.join("style_x0.f32"), &inputs.style)?;
    let sample_len = model.arch.in_channels * size * size;
    write_f32(&o.out_dir.join("x_b1.f32"), &crate::bench::random_x(1, sample_len))?;

    let mut log = |s: &str| {
        if !c.quiet {
            eprintln!("{s}");
        }
    };
    let mut results = Vec::new();
    for &precision in &o.precisions {
        let cp = Common { device: c.device, precision, quiet: c.quiet, verbose: c.verbose, threads: c.threads };
        let r = on_backend!(&cp, |be| run_on(be, &model, precision, &inputs, o, &mut log))
            .with_context(|| format!("bench in {}", precision.name()))?;
        results.push((precision.name(), r));
        // After every precision: a run cut short keeps what it measured.
        let json = crate::bench::report_json(&model, o, &results);
        crate::io::atomic::write_atomic(&o.out_dir.join("ours.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    }

    let out = o.out_dir.join("ours.json");

    println!("device: {}", crate::bench::device_only(&results[0].1.device));
    println!(
        "{:<6} {:>5} {:>11} {:>11} {:>11} {:>9}",
        "prec", "batch", "forward ms", "encoder ms", "decoder ms", "TFLOP/s"
    );
    for (_, r) in &results {
        for ((f, e), d) in r.forward.iter().zip(&r.encoder).zip(&r.decoder) {
            println!(
                "{:<6} {:>5} {:>11.3} {:>11.3} {:>11.3} {:>9.3}",
                f.precision, f.batch, f.ms, e.ms, d.ms, f.tflops
            );
        }
    }
    for (_, r) in &results {
        for p in &r.pair {
            println!("{:<6} pair {:<10} {:>8.3} s (first {:.3} s)", p.precision, p.preset, p.s, p.s_first);
        }
        for t in &r.throughput {
            println!("{:<6} {} pairs ({}) {:.3} s = {:.2} pairs/s", t.precision, t.batch, t.preset, t.s, t.pairs_per_s);
        }
        if let Some(b) = r.peak_pair_bytes.or(r.peak_bytes) {
            println!("{:<6} peak device memory {:.1} MiB", r.precision, b as f64 / 1048576.0);
        }
    }
    println!("wrote {}", out.display());
    Ok(())
}

/// `diffstyle evaluate`: the colour / edge evidence (`crate::eval`) for every content x
/// style pair of a `transfer` output folder; prints a summary, writes every number to
/// `out` (JSON).
pub fn evaluate(contents: &[PathBuf], styles: &[PathBuf], results: &Path, out: Option<&Path>) -> Result<()> {
    use crate::eval::{features, summarise, PairScore};
    ensure!(results.is_dir(), "{}: not a folder (give the --out folder of a multi-pair transfer)", results.display());
    if let Some(o) = out {
        check_parent(o)?;
    }
    let mut scores = Vec::new();
    let mut size = None;
    for cp in contents {
        for sp in styles {
            let file = results.join(format!("content_{}_style_{}.png", stem(cp), stem(sp)));
            ensure!(file.is_file(), "{}: missing (is it the output of this content and style?)", file.display());
            let img = crate::io::image::decode_image(&file)?;
            ensure!(img.width() == img.height(), "{}: not a square transfer output", file.display());
            let s = *size.get_or_insert(img.width() as usize);
            ensure!(
                img.width() as usize == s,
                "{}: {}x{}, the others are {s}x{s}",
                file.display(),
                img.width(),
                img.height()
            );
            let o = features(&crate::io::image::load_image(&file, s)?.data, s);
            let c = features(&crate::io::image::load_image(cp, s)?.data, s);
            let st = features(&crate::io::image::load_image(sp, s)?.data, s);
            scores.push(PairScore::new(stem(cp), stem(sp), &c, &st, &o));
        }
    }
    let sum = summarise(&scores);
    println!("{} pairs ({}x{} px)", sum.pairs, size.unwrap_or(0), size.unwrap_or(0));
    println!(
        "colour (histogram total variation): output to style {:.4}, to content {:.4}; closer to the style in {:.1} % of pairs",
        sum.mean_colour_to_style,
        sum.mean_colour_to_content,
        100.0 * sum.colour_from_style
    );
    println!(
        "edges (1 - correlation of Sobel maps): output to content {:.4}, to style {:.4}; closer to the content in {:.1} % of pairs",
        sum.mean_edges_to_content,
        sum.mean_edges_to_style,
        100.0 * sum.edges_from_content
    );
    println!("both hold in {:.1} % of pairs", 100.0 * sum.both);
    if let Some(o) = out {
        let json = serde_json::json!({ "summary": sum, "pairs": scores });
        crate::io::atomic::write_atomic(o, serde_json::to_string_pretty(&json)?.as_bytes())?;
        println!("wrote {}", o.display());
    }
    Ok(())
}

/// `diffstyle kernels`: every kernel family's micro-benchmarks (`backend::gpu::micro`)
/// on the GPU (U-Net shapes) or the emulator (small shapes), per precision.
pub fn kernels(c: &Common, precisions: &[Precision], small: bool, out: Option<&Path>) -> Result<()> {
    use crate::backend::gpu::micro::{format, run_all};
    ensure!(!precisions.is_empty(), "--precisions is empty");
    if let Some(o) = out {
        check_parent(o)?;
    }
    let mut rows = vec![];
    let mut device = String::new();
    for &precision in precisions {
        let rs = match c.device {
            DeviceChoice::Emu => {
                let be = GpuBackend::new(EmuDevice::new(), precision);
                device = be.describe();
                run_all(&be, true)?
            }
            DeviceChoice::Cuda | DeviceChoice::Auto => {
                let be = GpuBackend::new(CudaDevice::new(0).context("kernels")?, precision);
                device = be.describe();
                run_all(&be, small)?
            }
            DeviceChoice::Cpu => bail!("kernels times the GPU kernels: use --device cuda (or emu)"),
        };
        rows.extend(rs);
    }
    println!("device: {}", crate::bench::device_only(&device));
    if small || c.device == DeviceChoice::Emu {
        println!("(small shapes: the cases' channels and sides divided by 4 to 8)");
    }
    print!("{}", format(&rows));
    if let Some(o) = out {
        let json = serde_json::json!({ "device": crate::bench::device_only(&device), "small": small || c.device == DeviceChoice::Emu, "kernels": rows });
        crate::io::atomic::write_atomic(o, serde_json::to_string_pretty(&json)?.as_bytes())?;
        println!("wrote {}", o.display());
    }
    Ok(())
}
