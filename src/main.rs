//! The `diffstyle` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use diffstyle::commands::{self, Common, DeviceChoice, Knobs, ModelArgs, TransferJob};
use diffstyle::diffusion::method::Preset;
use diffstyle::dtype::Precision;

#[derive(Parser)]
#[command(
    name = "diffstyle",
    version,
    about = "Training-free style transfer through the h-space of a frozen diffusion U-Net (DiffStyle)",
    long_about = "Training-free style transfer through the h-space of a frozen, unconditional, \
pixel-space diffusion U-Net (DiffStyle / InjectFusion, arXiv 2303.15403).\n\n\
Both images are DDIM-inverted; generation starts from the style's latent while the \
content's h-space features (the U-Net bottleneck) are blended in by slerp. Models: \
diffusers UNet2DModel folders, or single .safetensors files with the original DDPM names \
described by --config or --arch."
)]
struct Cli {
    /// Where to run: `cpu` (multi-threaded, on the best instruction set of the CPU:
    /// amx, avx512, avx2 or portable; `DIFFSTYLE_CPU_ISA=NAME` forces one, and the
    /// software twins `amx-emu` / `avx512-emu`; `info` shows the choice), `cuda` (an
    /// NVIDIA GPU, compute capability 8.0+, through the hand-written kernels), `emu` (the
    /// same kernels run by a host emulator: very slow, for checking kernels on a machine
    /// without a GPU) or `auto` (a usable GPU when there is one, else the CPU).
    #[arg(long, global = true, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// Weight storage precision (activations, latents and the h-space mix stay f32).
    /// On the CPU, bf16 runs the convolutions on bf16 products (AMX tiles, or
    /// `vdpbf16ps` on AVX512-BF16; f32 accumulation) where the CPU has them, and
    /// otherwise, like f16, rounds the weights through that format and multiplies in
    /// f32; on a GPU the convolution weights are stored in it and run on tensor cores
    /// (f32 accumulation).
    #[arg(long, global = true, value_enum, default_value = "f32")]
    precision: Precision,
    /// No progress bars (they are also off when stderr is not a terminal), no server
    /// access log.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Print timings, work counts and memory use.
    #[arg(long, short, global = true)]
    verbose: bool,
    /// CPU threads (0 = all cores).
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct ModelOpts {
    /// The model: a diffusers UNet2DModel folder (config.json +
    /// diffusion_pytorch_model.safetensors), a diffusers pipeline folder (model_index.json
    /// + unet/), or a single .safetensors file (with --config or --arch).
    #[arg(long)]
    model: PathBuf,
    /// Architecture of a single .safetensors file: the authors' config (YAML or JSON with
    /// data / model / diffusion sections) or a diffusers config.json.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Built-in architecture for a single .safetensors file: ddpm-256.
    #[arg(long)]
    arch: Option<String>,
}

// Signed knobs accept negative numbers (`--gamma -0.1`), so that the range check
// names the knob instead of the parser reporting an unknown argument.
#[derive(Args, Clone)]
struct KnobOpts {
    /// Start from a preset (explicit knobs below override it). Without one: the model's
    /// recommended knobs when its folder has `diffstyle_knobs.json` (`info` shows
    /// them), else in-domain.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Content weight of the h-space slerp, in [0, 1] (authors: --hs_coeff / h_gamma).
    #[arg(long, allow_negative_numbers = true)]
    gamma: Option<f32>,
    /// Mix h only at t >= t_edit (authors: --user_defined_t_edit). Preset: 400.
    #[arg(long, allow_negative_numbers = true)]
    t_edit: Option<i64>,
    /// DDIM inversion steps (authors: --n_inv_step). Preset: 50.
    #[arg(long)]
    inv_steps: Option<usize>,
    /// Generation steps (authors: --n_gen_step). Preset: 1000.
    #[arg(long)]
    gen_steps: Option<usize>,
    /// Injection-capable steps = seq(N); 0 = every step (authors:
    /// --content_replace_step). Preset: 50.
    #[arg(long)]
    replace_steps: Option<usize>,
    /// Stochastic (eta = 1) injection steps at t <= t_boost (authors: --t_noise).
    /// Preset: 200.
    #[arg(long, allow_negative_numbers = true)]
    t_boost: Option<i64>,
    /// Scale of the DDIM direction term at t >= dt_end (authors: --dt_lambda). Preset: 1.
    #[arg(long, allow_negative_numbers = true)]
    dt_lambda: Option<f32>,
    /// See --dt-lambda (authors: --dt_end). Preset: 950.
    #[arg(long, allow_negative_numbers = true)]
    dt_end: Option<i64>,
    /// Style calibration strength; 0 = off (authors: --omega). Preset: 0.
    #[arg(long, allow_negative_numbers = true)]
    omega: Option<f32>,
    /// Seed of the noise of the stochastic steps. Preset: 1234.
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Style transfer of every content x style pair.
    Transfer {
        #[command(flatten)]
        model: ModelOpts,
        /// Content image(s) (PNG/JPEG/WebP, any size) or inversion caches (.safetensors).
        #[arg(long, required = true, num_args = 1..)]
        content: Vec<PathBuf>,
        /// Style image(s) or inversion caches.
        #[arg(long, required = true, num_args = 1..)]
        style: Vec<PathBuf>,
        /// Output: the image file for one pair; a folder (one PNG per pair + grid.png)
        /// for several.
        #[arg(long)]
        out: PathBuf,
        /// Local mixing: an image (white = content) of any size, area-averaged to the
        /// h grid. Without it the whole h is mixed.
        #[arg(long)]
        mask: Option<PathBuf>,
        /// (One pair) also write the final latent as f32 NCHW safetensors, key `x0`.
        #[arg(long)]
        dump_tensor: Option<PathBuf>,
        /// Pairs (and inversions) run side by side in one batch: more throughput on a
        /// GPU, as much more activation memory. Results do not depend on it.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Run once per value of a knob, sharing the inversions: `--sweep gamma=0.2,0.4,0.6`
        /// (knob names as in the server's fields or as flags: t_edit or t-edit). Repeat for
        /// every combination of several knobs. --out becomes a folder: one sub-folder per
        /// value (`gamma=0.4/`, the pairs' PNGs and grid.png), `sweep.png` (a row per pair:
        /// content, style, a labelled column per value) and `sweep.json` (the colour / edge
        /// figures of `evaluate` per value). Not `inv_steps` or `preset`, which would need
        /// other inversions.
        #[arg(long, value_name = "KNOB=V1,V2,...")]
        sweep: Vec<String>,
        #[command(flatten)]
        knobs: Box<KnobOpts>,
    },
    /// Serve transfers over HTTP: the model and engines made once, an in-memory
    /// inversion cache, compatible requests batched, a bounded queue. Routes: GET /
    /// (a web page), GET /healthz, GET /metrics (Prometheus), POST /v1/transfer and
    /// POST /v1/invert (multipart/form-data; see the README's "Server" section). Stops
    /// on SIGINT / SIGTERM after finishing what runs. Logs a line per /v1 request on
    /// stderr (not with --quiet).
    Serve {
        #[command(flatten)]
        model: ModelOpts,
        #[command(flatten)]
        args: commands::ServeArgs,
    },
    /// DDIM-invert an image and write the inversion cache (x_T, the h trajectory).
    Invert {
        #[command(flatten)]
        model: ModelOpts,
        /// The image to invert.
        #[arg(long)]
        image: PathBuf,
        /// The cache file to write (.safetensors).
        #[arg(long)]
        out: PathBuf,
        /// DDIM inversion steps.
        #[arg(long, default_value_t = 50)]
        inv_steps: usize,
    },
    /// Plain DDIM sampling from seeded noise: a grid of N images.
    Sample {
        #[command(flatten)]
        model: ModelOpts,
        /// Number of images.
        #[arg(long, short, default_value_t = 4)]
        n: usize,
        /// DDIM steps.
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Seed of the initial noise.
        #[arg(long, default_value_t = 1234)]
        seed: u64,
        /// The grid PNG to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Architecture, parameter count, GFLOP per forward and the activation memory plan.
    Info {
        /// A model (optional when --config or --arch describe the architecture).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Architecture of a single .safetensors file, or on its own: the authors' config
        /// or a diffusers config.json.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Built-in architecture, for a single .safetensors file or on its own: ddpm-256.
        #[arg(long)]
        arch: Option<String>,
        /// Also list every planned activation buffer.
        #[arg(long)]
        plan: bool,
    },
    /// Write a checkpoint of seeded random weights for an architecture (a stand-in for
    /// a real checkpoint in benchmarks and GPU checks; load it with the same --arch or
    /// --config).
    RandomModel {
        /// Built-in architecture (ddpm-256).
        #[arg(long, conflicts_with = "config", required_unless_present = "config")]
        arch: Option<String>,
        /// Or an architecture from a config file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Seed of the weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The .safetensors file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Kernel micro-benchmarks: each kernel family timed on its own at the DDPM-256
    /// U-Net's shapes (small shapes on the emulator), with the variants its launcher
    /// chooses between (conv gathers, one-block or split group norm); TFLOP/s and GB/s
    /// against the fewest bytes each op must move.
    Kernels {
        /// Weight precisions to time, each on a fresh backend.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "bf16,f16,f32")]
        precisions: Vec<Precision>,
        /// Small shapes on a GPU too (always on the emulator).
        #[arg(long)]
        small: bool,
        /// Also write the timings as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Evidence that transfers took content and style from the right images: for every
    /// content x style pair of a transfer output folder, the output's colour histogram
    /// distance to the style and to the content, and its edge-map distance to the content
    /// and to the style; prints how often colours are closer to the style and edges
    /// closer to the content.
    Evaluate {
        /// The content images given to `transfer`.
        #[arg(long, required = true, num_args = 1..)]
        content: Vec<PathBuf>,
        /// The style images given to `transfer`.
        #[arg(long, required = true, num_args = 1..)]
        style: Vec<PathBuf>,
        /// The folder `transfer` wrote (content_<name>_style_<name>.png per pair).
        #[arg(long)]
        results: PathBuf,
        /// Known answers: a text file with one line per pair, `content<TAB>style<TAB>truth`
        /// (content and style as given above; truth relative to the file's folder). For
        /// those pairs it also reports how often and by how much the output is closer to
        /// the truth than the content image is (colour, edges, PSNR).
        #[arg(long)]
        truth: Option<PathBuf>,
        /// Also write every pair's numbers as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Time U-Net forwards (whole, encoder, decoder) at several batch sizes and whole
    /// pairs, for each precision (the global --precision is ignored). Writes
    /// OUT_DIR/ours.json plus the inputs and outputs (x, eps, preprocessed images, pair
    /// images) that tools/bench_torch_gpu.py runs the PyTorch baselines on and checks
    /// against. Each timed region is one step graph, timed with device events on a GPU.
    Bench {
        #[command(flatten)]
        model: ModelOpts,
        /// Folder for ours.json and the files beside it (created if missing).
        #[arg(long)]
        out_dir: PathBuf,
        /// Weight precisions to measure, each on a fresh backend.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "bf16,f16,f32")]
        precisions: Vec<Precision>,
        /// Batch sizes of the timed forwards.
        #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
        batches: Vec<usize>,
        /// Whole pairs to time (content + style inversion, then generation), each run
        /// twice; the second run is reported.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "in-domain,fast")]
        pairs: Vec<Preset>,
        /// Precisions the pairs and the throughput batches run in (default: all of
        /// --precisions).
        #[arg(long, value_enum, value_delimiter = ',')]
        pair_precisions: Option<Vec<Precision>>,
        /// Time no pairs (forwards only).
        #[arg(long, conflicts_with = "pairs")]
        no_pairs: bool,
        /// Throughput: batches of pairs run side by side (e.g. 8,32), each pair with its
        /// own two inversions, reported as pairs per second, in the first of the pair
        /// precisions. None by default.
        #[arg(long, value_delimiter = ',')]
        throughput: Vec<usize>,
        /// The settings of the throughput batches.
        #[arg(long, value_enum, default_value = "fast")]
        throughput_preset: Preset,
        /// The content image of the timed pairs.
        #[arg(long, default_value = "examples/content.png")]
        content: PathBuf,
        /// The style image of the timed pairs.
        #[arg(long, default_value = "examples/style.png")]
        style: PathBuf,
        /// Timed runs per measurement: at least this many...
        #[arg(long, default_value_t = 20)]
        min_runs: usize,
        /// ...and at least this many seconds.
        #[arg(long, default_value_t = 1.0)]
        min_secs: f64,
        /// Untimed runs before each measurement.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Also time every op of a batch-1 forward on its own (direct launches, device
        /// events): time, TFLOP/s and GB/s per op kind and resolution.
        #[arg(long)]
        profile: bool,
    },
}

impl From<ModelOpts> for ModelArgs {
    fn from(m: ModelOpts) -> Self {
        ModelArgs { model: Some(m.model), config: m.config, arch: m.arch }
    }
}

impl From<KnobOpts> for Knobs {
    fn from(k: KnobOpts) -> Self {
        Knobs {
            preset: k.preset,
            gamma: k.gamma,
            t_edit: k.t_edit,
            inv_steps: k.inv_steps,
            gen_steps: k.gen_steps,
            replace_steps: k.replace_steps,
            t_boost: k.t_boost,
            dt_lambda: k.dt_lambda,
            dt_end: k.dt_end,
            omega: k.omega,
            seed: k.seed,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = Common {
        device: cli.device,
        precision: cli.precision,
        quiet: cli.quiet,
        verbose: cli.verbose,
        threads: cli.threads,
    };
    let result = match cli.cmd {
        Cmd::Transfer { model, content, style, out, mask, dump_tensor, batch, sweep, knobs } => {
            let knobs: Knobs = (*knobs).into();
            let job = TransferJob {
                contents: &content,
                styles: &style,
                out: &out,
                mask: mask.as_deref(),
                dump: dump_tensor.as_deref(),
                knobs: &knobs,
                batch,
                sweep: &sweep,
            };
            commands::transfer(&common, &model.into(), &job)
        }
        Cmd::Serve { model, args } => commands::serve(&common, &model.into(), &args),
        Cmd::Invert { model, image, out, inv_steps } => {
            commands::invert(&common, &model.into(), &image, &out, inv_steps)
        }
        Cmd::Sample { model, n, steps, seed, out } => commands::sample(&common, &model.into(), n, steps, seed, &out),
        Cmd::Info { model, config, arch, plan } => commands::info(&common, &ModelArgs { model, config, arch }, plan),
        Cmd::RandomModel { arch, config, seed, out } => {
            commands::random_model(&ModelArgs { model: None, config, arch }, seed, &out)
        }
        Cmd::Kernels { precisions, small, out } => commands::kernels(&common, &precisions, small, out.as_deref()),
        Cmd::Evaluate { content, style, results, truth, out } => {
            commands::evaluate(&content, &style, &results, truth.as_deref(), out.as_deref())
        }
        Cmd::Bench {
            model,
            out_dir,
            precisions,
            batches,
            pairs,
            no_pairs,
            pair_precisions,
            throughput,
            throughput_preset,
            content,
            style,
            min_runs,
            min_secs,
            warmup,
            profile,
        } => {
            let pair_precisions = pair_precisions.unwrap_or_else(|| precisions.clone());
            let opts = diffstyle::bench::BenchOpts {
                out_dir,
                precisions,
                batches,
                presets: if no_pairs { vec![] } else { pairs },
                throughput,
                throughput_preset,
                pair_precisions,
                content,
                style,
                min_runs,
                min_secs,
                warmup,
                profile,
            };
            commands::bench(&common, &model.into(), &opts)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
