//! What the CLI's subcommands do, as library functions (main.rs only parses): one file
//! per subcommand; this file holds what they share — the global options, device
//! picking and the backend dispatch macro, the progress bar, model loading and output
//! checks.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use crate::backend::Backend;
use crate::diffusion::method::Engine;
use crate::dtype::Precision;
use crate::model::config::{load_config_file, preset, ModelConfig};
use crate::model::unet::UNet;
use crate::model::weights::{load_model, LoadedModel};
pub use crate::pipeline::device::DeviceChoice;
use crate::pipeline::device::Picked;
use crate::pipeline::{Pipeline, PipelineOptions, Scheduling};

mod bench;
mod evaluate;
mod info;
mod invert;
mod kernels;
mod random_model;
mod sample;
mod serve;
mod transfer;

pub use crate::pipeline::Knobs;
pub use bench::bench;
pub use evaluate::evaluate;
pub use info::info;
pub use invert::invert;
pub use kernels::kernels;
pub use random_model::random_model;
pub use sample::sample;
pub use serve::{serve, ServeArgs};
pub use transfer::{transfer, TransferJob};

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
pub(crate) fn pick(c: &Common) -> Result<Picked> {
    crate::pipeline::device::pick(c.device, c.precision, c.threads, c.verbose)
}

/// Runs `$body` with `$be` bound to the picked backend (each arm is monomorphised).
macro_rules! on_backend {
    ($c:expr, |$be:ident| $body:expr) => {
        $crate::with_backend!($crate::commands::pick($c)?, |$be| $body)
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
    report(c, &be.describe(), be.peak_device_bytes().map(|b| b as u64));
}

/// `--verbose`: where a pipeline ran and, on a GPU, its peak device memory.
pub(crate) fn report_pipeline(c: &Common, p: &Pipeline) {
    report(c, &p.info().device, p.peak_device_bytes());
}

fn report(c: &Common, device: &str, peak: Option<u64>) {
    if c.verbose {
        match peak {
            Some(b) => eprintln!("device: {device}; peak device memory {:.1} MiB", b as f64 / 1048576.0),
            None => eprintln!("device: {device}"),
        }
    }
}

/// A pipeline on the global options' device, precision and threads, running up to
/// `batch` images or pairs at once (step scheduling, no cache: each command run is one
/// job).
pub(crate) fn pipeline_options(c: &Common, batch: usize) -> PipelineOptions {
    PipelineOptions {
        device: c.device,
        precision: c.precision,
        threads: c.threads,
        scheduling: Scheduling::Step,
        max_batch: batch,
        small_batches: false,
        long_every: None,
        cache_mib: 0,
        verbose: c.verbose,
    }
}

pub(crate) fn model(m: &ModelArgs) -> Result<LoadedModel> {
    let path = m.model.as_deref().context("--model is required")?;
    load_model(path, m.config.as_deref(), m.arch.as_deref())
}

/// The knobs recommended by the model's folder ([`crate::pipeline::knobs::RECOMMENDED_FILE`]),
/// if it has them.
pub(crate) fn recommended(m: &ModelArgs) -> Result<Option<Knobs>> {
    match m.model.as_deref() {
        Some(path) => crate::pipeline::knobs::recommended_for(path),
        None => Ok(None),
    }
}

/// Checks a model's recommended knobs against its schedule, so that a bad file is an
/// error naming it before any work (rather than a knob error the user did not cause).
pub(crate) fn check_recommended(
    m: &ModelArgs,
    rec: Option<&Knobs>,
    schedule: &crate::model::schedule::Schedule,
) -> Result<()> {
    if let (Some(k), Some(dir)) = (rec, m.model.as_deref()) {
        let file = dir.join(crate::pipeline::knobs::RECOMMENDED_FILE);
        k.settings()
            .check_knobs(schedule.len())
            .map_err(|e| anyhow::anyhow!("{}: {} {}", file.display(), e.knob, e.problem))?;
    }
    Ok(())
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

pub(crate) fn check_parent(out: &Path) -> Result<()> {
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    ensure!(parent.is_dir(), "{}: the output folder {} does not exist", out.display(), parent.display());
    ensure!(!out.is_dir(), "{}: is a folder, expected an output file name", out.display());
    Ok(())
}
