//! What the CLI's subcommands do, as library functions (main.rs only parses): one file
//! per subcommand; this file holds what they share — the global options, device
//! picking and the backend dispatch macro, the progress bar, model loading and output
//! checks.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::cuda::CudaDevice;
use crate::backend::gpu::emu::EmuDevice;
use crate::backend::gpu::GpuBackend;
use crate::backend::Backend;
use crate::diffusion::method::Engine;
use crate::dtype::Precision;
use crate::io::cache::CacheKey;
use crate::model::config::{load_config_file, preset, ModelConfig};
use crate::model::unet::UNet;
use crate::model::weights::{load_model, LoadedModel};

mod bench;
mod evaluate;
mod info;
mod invert;
mod kernels;
mod random_model;
mod sample;
mod transfer;

pub use bench::bench;
pub use evaluate::evaluate;
pub use info::info;
pub use invert::invert;
pub use kernels::kernels;
pub use random_model::random_model;
pub use sample::sample;
pub use transfer::{transfer, Knobs, TransferJob};

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

/// The backend `--device` asks for.
pub(crate) enum Picked {
    Cpu(CpuBackend),
    Emu(GpuBackend<EmuDevice>),
    Cuda(GpuBackend<CudaDevice>),
}

pub(crate) fn pick(c: &Common) -> Result<Picked> {
    Ok(match c.device {
        DeviceChoice::Cpu => Picked::Cpu(CpuBackend::new(c.threads)),
        DeviceChoice::Emu => Picked::Emu(GpuBackend::new(EmuDevice::from_env()?, c.precision)),
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
        match $crate::commands::pick($c)? {
            $crate::commands::Picked::Cpu(b) => {
                let $be = &b;
                $body
            }
            $crate::commands::Picked::Emu(b) => {
                let $be = &b;
                $body
            }
            $crate::commands::Picked::Cuda(b) => {
                let $be = &b;
                $body
            }
        }
    };
}
pub(crate) use on_backend;

/// The engine (activation arena, latent slots) for `unet`. Built before any input is
/// decoded at the model's resolution, so that an architecture too large for memory is
/// an error naming the model rather than an abort in the image code.
pub(crate) fn engine<'a, B: Backend>(be: &'a B, unet: &'a UNet<B>, m: &'a LoadedModel) -> Result<Engine<'a, B>> {
    Engine::new(be, unet, &m.schedule).with_context(|| format!("model {}", m.source))
}

/// `--verbose`: where the run happened and, on a GPU, its peak device memory.
pub(crate) fn report_device<B: Backend>(c: &Common, be: &B) {
    if c.verbose {
        match be.peak_device_bytes() {
            Some(b) => eprintln!("device: {}; peak device memory {:.1} MiB", be.describe(), b as f64 / 1048576.0),
            None => eprintln!("device: {}", be.describe()),
        }
    }
}

pub(crate) fn model(m: &ModelArgs) -> Result<LoadedModel> {
    let path = m.model.as_deref().context("--model is required")?;
    load_model(path, m.config.as_deref(), m.arch.as_deref())
}

/// The architecture and schedule that --config / --arch describe.
pub(crate) fn described_arch(m: &ModelArgs) -> Result<ModelConfig> {
    match (&m.config, &m.arch) {
        (Some(path), None) => load_config_file(path),
        (None, Some(name)) => preset(name),
        _ => bail!("give exactly one of --config / --arch"),
    }
}

/// A progress bar on stderr, hidden with --quiet or when stderr is not a terminal.
pub(crate) struct Progress(indicatif::ProgressBar);

impl Progress {
    pub(crate) fn new(c: &Common, len: usize, what: &str) -> Self {
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
    pub(crate) fn tick(&self) {
        self.0.inc(1);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

pub(crate) fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "input".into())
}

pub(crate) fn cache_key(m: &LoadedModel, precision: Precision, inv_steps: usize) -> CacheKey {
    CacheKey { model_hash: format!("{}-{precision:?}", m.hash).to_lowercase(), inv_steps }
}

pub(crate) fn shapes(m: &LoadedModel) -> ([usize; 3], [usize; 3]) {
    let a = &m.arch;
    ([a.in_channels, a.sample_size, a.sample_size], [a.h_channels(), a.h_size(), a.h_size()])
}

pub(crate) fn check_parent(out: &Path) -> Result<()> {
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    ensure!(parent.is_dir(), "{}: the output folder {} does not exist", out.display(), parent.display());
    ensure!(!out.is_dir(), "{}: is a folder, expected an output file name", out.display());
    Ok(())
}
