//! The library's high-level API: a [`Pipeline`] loads a model on a device once and then
//! runs DiffStyle transfers and inversions, one at a time or batched, from any thread.
//! The `transfer` and `invert` subcommands and the server (`diffstyle serve`) all run
//! through it.
//!
//! ```no_run
//! use diffstyle::diffusion::method::Preset;
//! use diffstyle::pipeline::{ModelSource, Pipeline, PipelineOptions, Source};
//!
//! # fn main() -> anyhow::Result<()> {
//! let model = ModelSource::path("tests/fixtures/method/model");
//! let p = Pipeline::load(&model, &PipelineOptions { cache_mib: 64, ..Default::default() })?;
//! let content = Source::Image(p.image_from_path("examples/content.png".as_ref())?);
//! let style = Source::Image(p.image_from_path("examples/style.png".as_ref())?);
//! let out = p.transfer(&content, &style, &Preset::Fast.settings(), None)?;
//! out.save_png("out.png".as_ref())?;
//! # Ok(())
//! # }
//! ```
//!
//! Requests can also be submitted without waiting: [`Pipeline::submit`] returns a
//! [`Ticket`] that yields the progress and the answer, and cancels the request when
//! dropped first. With [`Scheduling::Step`] (the default) every request, from any
//! thread, joins one running batch between denoising steps, each with its own knobs
//! and mask, and leaves it when done or cancelled: a short request never waits for a
//! long one to end. Every output is bit-identical to the request's alone.
//!
//! ```no_run
//! # use diffstyle::diffusion::method::Preset;
//! # use diffstyle::pipeline::{ModelSource, Pipeline, PipelineOptions, Source, Pair, Request};
//! # fn main() -> anyhow::Result<()> {
//! # let p = Pipeline::load(&ModelSource::path("tests/fixtures/method/model"), &PipelineOptions::default())?;
//! let content = Source::Image(p.image_from_path("examples/content.png".as_ref())?);
//! let style = Source::Image(p.image_from_path("examples/style.png".as_ref())?);
//! let pair = Pair { content, style };
//! let ticket = p.submit(Request::Transfer { pair, settings: Preset::Fast.settings(), mask: None })?;
//! let out = ticket.wait(&mut |done, total| eprintln!("{done}/{total}"))?.into_output()?;
//! out.save_png("out.png".as_ref())?;
//! # Ok(())
//! # }
//! ```
//!
//! Inside, one engine thread owns the backend, the stepper and the batch engines
//! (`worker.rs`, with the step scheduler's books in `scheduler.rs`); a [`Pipeline`] is a
//! handle to it that is `Send + Sync`, so it can be shared (in an `Arc`) by many
//! threads. Inversions of images are kept in an in-memory cache (`cache.rs`, a
//! segmented LRU) when `cache_mib` > 0.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::diffusion::method::{check_schedule, Counts, Inversion, Settings};
use crate::dtype::Precision;
use crate::io::cache::{self as cache_file, CacheKey};
use crate::model::schedule::Schedule;
use crate::model::weights::{load_model, LoadedModel};

pub mod cache;
pub mod device;
pub mod knobs;
mod scheduler;
mod ticket;
mod worker;

pub use cache::{CacheStats, InversionCache};
pub use device::DeviceChoice;
pub use knobs::Knobs;
use scheduler::{Resolved, Side, Submitted};
pub use ticket::{Answer, Cancelled, Canceller, Request, Ticket};
use ticket::{Event, TicketState};
use worker::{Done, Msg, Op, Reply, Shared};

/// How a pipeline groups work on its engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheduling {
    /// Every request joins one running batch between denoising steps and leaves it when
    /// done or cancelled (up to the max batch of jobs per step).
    #[default]
    Step,
    /// Whole batches (of requests with the same knobs and mask) run to their end, one
    /// after another, on engines of fixed batch sizes (a submitted request still runs,
    /// through a one-job stepper).
    Batch,
}

impl Scheduling {
    pub fn name(self) -> &'static str {
        match self {
            Scheduling::Step => "step",
            Scheduling::Batch => "batch",
        }
    }
}

/// Where a model comes from: a diffusers folder, or a single `.safetensors` file with
/// its architecture given by a config file or a built-in name.
#[derive(Clone, Debug, Default)]
pub struct ModelSource {
    pub path: PathBuf,
    pub config: Option<PathBuf>,
    pub arch: Option<String>,
}

impl ModelSource {
    /// A diffusers folder (or a file whose architecture is found beside it).
    pub fn path(p: impl Into<PathBuf>) -> Self {
        Self { path: p.into(), ..Default::default() }
    }

    pub fn load(&self) -> Result<LoadedModel> {
        load_model(&self.path, self.config.as_deref(), self.arch.as_deref())
    }
}

/// How a pipeline runs.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    pub device: DeviceChoice,
    /// Weight storage precision.
    pub precision: Precision,
    /// CPU threads (0 = all cores).
    pub threads: usize,
    /// How work is grouped: step scheduling (the default) or whole batches.
    pub scheduling: Scheduling,
    /// The most images or pairs run side by side in one batch (step scheduling: jobs
    /// in one step).
    pub max_batch: usize,
    /// Batch scheduling: also keep engines for the powers of two below `max_batch`, so
    /// that a partial batch does not pay for padding (about twice the activation
    /// memory). The stepper never pads.
    pub small_batches: bool,
    /// Step scheduling: while shorter requests run, a request with over 4x their steps
    /// left advances only on every `long_every`-th step (1: every job every step).
    /// `None`: 4 on the CPU, where a step costs about the sum of its samples, so a long
    /// request sharing every step would double the short ones' time; 1 on a GPU, where
    /// a step of several samples is expected to cost little more than one (not yet
    /// measured on a GPU).
    pub long_every: Option<usize>,
    /// The in-memory inversion cache, MiB (0 = none).
    pub cache_mib: usize,
    /// Say why `DeviceChoice::Auto` fell back to the CPU.
    pub verbose: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            device: DeviceChoice::Auto,
            precision: Precision::F32,
            threads: 0,
            scheduling: Scheduling::Step,
            max_batch: 1,
            small_batches: false,
            long_every: None,
            cache_mib: 0,
            verbose: false,
        }
    }
}

/// What a pipeline runs on.
#[derive(Clone, Debug)]
pub struct PipelineInfo {
    /// The model's path as given.
    pub source: String,
    /// The weights' hash and the precision: what inversions are valid for.
    pub model_key: String,
    pub precision: Precision,
    /// The backend, in words.
    pub device: String,
    /// Images are `3 x sample_size x sample_size` in model space.
    pub sample_size: usize,
    pub in_channels: usize,
    /// The h grid (masks are reduced to it) and h's channels.
    pub h_size: usize,
    pub h_channels: usize,
    pub max_batch: usize,
    pub scheduling: Scheduling,
    /// The batch engines' sizes, ascending (step scheduling: the one stepper's).
    pub batches: Vec<usize>,
}

/// An image preprocessed to the model's input (the authors' crop and resize), with a
/// digest of its pixels.
#[derive(Clone, Debug)]
pub struct Image {
    /// CHW model space, values in [-1, 1].
    pub x0: Arc<[f32]>,
    pub digest: [u8; 32],
}

/// A local-mixing mask on the h grid (1 = content).
#[derive(Clone, Debug, PartialEq)]
pub struct Mask(pub Arc<[f32]>);

/// One side of a pair: an image to invert (or find in the cache), or an inversion.
#[derive(Clone, Debug)]
pub enum Source {
    Image(Image),
    Inversion(Arc<Inversion>),
}

#[derive(Clone, Debug)]
pub struct Pair {
    pub content: Source,
    pub style: Source,
}

/// A generated image: CHW model space, `3 x size x size`, unclamped.
#[derive(Clone, Debug)]
pub struct Output {
    pub x: Vec<f32>,
    pub size: usize,
}

impl Output {
    /// The image as PNG bytes (what `save_png` writes).
    pub fn png(&self) -> Result<Vec<u8>> {
        crate::io::image::encode_png(&self.x, self.size, self.size)
    }

    /// Writes the PNG atomically (nothing half-written on failure).
    pub fn save_png(&self, path: &Path) -> Result<()> {
        crate::io::image::save_png(path, &self.x, self.size, self.size)
    }
}

/// A model on a device, ready to run. See the module documentation.
pub struct Pipeline {
    tx: Option<Sender<Msg>>,
    worker: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    info: PipelineInfo,
    /// The model's noise schedule (the weights live on the engine thread only).
    schedule: Schedule,
    cache: Arc<InversionCache>,
}

impl Pipeline {
    /// Loads the model and makes the pipeline ([`Pipeline::new`]).
    pub fn load(model: &ModelSource, opts: &PipelineOptions) -> Result<Self> {
        Self::new(model.load()?, opts)
    }

    /// Uploads the weights to the device and allocates every engine; errors (no such
    /// device, not enough memory) name the model.
    pub fn new(model: LoadedModel, opts: &PipelineOptions) -> Result<Self> {
        ensure!(opts.max_batch >= 1, "the batch must hold at least one pair");
        ensure!(opts.long_every != Some(0), "long_every must be at least 1");
        check_schedule(&model.schedule).with_context(|| format!("model {}", model.source))?;
        // Step scheduling runs everything on a stepper of max_batch lanes; batch
        // scheduling on the engines, with a one-lane stepper for `submit`.
        let (batches, lanes) = match opts.scheduling {
            Scheduling::Step => (vec![], opts.max_batch),
            Scheduling::Batch => {
                let mut b: Vec<usize> = if opts.small_batches {
                    (0..usize::BITS).map(|k| 1usize << k).take_while(|&n| n < opts.max_batch).collect()
                } else {
                    vec![]
                };
                b.push(opts.max_batch);
                (b, 1)
            }
        };
        let a = &model.arch;
        let model_key = format!("{}-{:?}", model.hash, opts.precision).to_lowercase();
        let partial = PipelineInfo {
            source: model.source.clone(),
            model_key,
            precision: opts.precision,
            device: String::new(),
            sample_size: a.sample_size,
            in_channels: a.in_channels,
            h_size: a.h_size(),
            h_channels: a.h_channels(),
            max_batch: opts.max_batch,
            scheduling: opts.scheduling,
            batches: if batches.is_empty() { vec![lanes] } else { batches.clone() },
        };
        let schedule = model.schedule.clone();
        let shared = Arc::new(Shared::default());
        let cache = Arc::new(InversionCache::new(opts.cache_mib.saturating_mul(1 << 20)));
        let setup = worker::Setup {
            device: opts.device,
            precision: opts.precision,
            threads: opts.threads,
            verbose: opts.verbose,
            batches,
            lanes,
            cache: cache.clone(),
            long_every: opts.long_every,
        };
        // The host weights go to the engine thread, which drops them once they are on
        // the backend.
        let (tx, handle, device) = worker::spawn(model, setup, shared.clone())?;
        Ok(Self {
            tx: Some(tx),
            worker: Some(handle),
            shared,
            info: PipelineInfo { device, ..partial },
            schedule,
            cache,
        })
    }

    pub fn info(&self) -> &PipelineInfo {
        &self.info
    }

    /// The model's noise schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Whether the engine thread is still running (it stops only if it panicked outside
    /// an op, or when the pipeline is dropped).
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Relaxed)
    }

    /// Peak device memory so far, where the backend knows it (GPUs).
    pub fn peak_device_bytes(&self) -> Option<u64> {
        Some(self.shared.peak_device_bytes.load(Relaxed)).filter(|&b| b != u64::MAX)
    }

    /// Encoder / decoder passes and step kinds run so far.
    pub fn counts(&self) -> Counts {
        self.shared.counts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Requests cancelled before their answer (step scheduler).
    pub fn cancelled(&self) -> u64 {
        self.shared.cancelled.load(Relaxed)
    }

    /// Submitted requests none of whose work has started yet.
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Relaxed)
    }

    /// Steps the stepper has run, by how many jobs each advanced.
    pub fn step_batches(&self) -> BTreeMap<usize, u64> {
        self.shared.steps.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// What an inversion cache file must match to be used for `inv_steps`.
    pub fn cache_key(&self, inv_steps: usize) -> CacheKey {
        CacheKey { model_hash: self.info.model_key.clone(), inv_steps }
    }

    fn image(&self, x0: Vec<f32>) -> Image {
        Image { digest: cache::image_digest(&x0), x0: x0.into() }
    }

    /// An image already in model space (CHW, `3 x sample_size x sample_size`, values in
    /// [-1, 1]), made by the caller.
    pub fn image_from_model_space(&self, x0: Vec<f32>) -> Result<Image> {
        let (shape, _) = self.shapes();
        let want: usize = shape.iter().product();
        ensure!(x0.len() == want, "the image has {} values, the model takes {want} ({shape:?})", x0.len());
        ensure!(x0.iter().all(|v| v.is_finite()), "the image has non-finite values");
        Ok(self.image(x0))
    }

    /// Decodes and preprocesses an image file (PNG, JPEG, WebP).
    pub fn image_from_path(&self, path: &Path) -> Result<Image> {
        Ok(self.image(crate::io::image::load_image(path, self.info.sample_size)?.data))
    }

    /// Decodes and preprocesses encoded image bytes; `name` names them in errors.
    pub fn image_from_bytes(&self, bytes: &[u8], name: &str) -> Result<Image> {
        Ok(self.image(crate::io::image::load_image_bytes(bytes, name, self.info.sample_size)?.data))
    }

    /// A mask image file reduced to the h grid.
    pub fn mask_from_path(&self, path: &Path) -> Result<Mask> {
        Ok(Mask(crate::io::mask::load_mask(path, self.info.h_size)?.into()))
    }

    /// Mask image bytes reduced to the h grid; `name` names them in errors.
    pub fn mask_from_bytes(&self, bytes: &[u8], name: &str) -> Result<Mask> {
        Ok(Mask(crate::io::mask::load_mask_bytes(bytes, name, self.info.h_size)?.into()))
    }

    fn shapes(&self) -> ([usize; 3], [usize; 3]) {
        let i = &self.info;
        ([i.in_channels, i.sample_size, i.sample_size], [i.h_channels, i.h_size, i.h_size])
    }

    /// Reads an inversion cache file (`diffstyle invert`), refusing one made by another
    /// model, precision or number of steps.
    pub fn load_inversion(&self, path: &Path, inv_steps: usize) -> Result<Arc<Inversion>> {
        let (shape, h_shape) = self.shapes();
        let c = cache_file::load(path, &self.cache_key(inv_steps), shape, h_shape)?;
        let inv =
            Inversion::from_parts(c.x0, c.x_t, c.h, c.keys, inv_steps).with_context(|| path.display().to_string())?;
        Ok(Arc::new(inv))
    }

    /// Writes `inv` (made with `inv_steps` steps) as an inversion cache file; `source`
    /// is recorded as where its image came from.
    pub fn save_inversion(&self, path: &Path, inv: &Inversion, inv_steps: usize, source: &str) -> Result<()> {
        let (shape, h_shape) = self.shapes();
        let rec =
            cache_file::Cached { x0: inv.x0.clone(), x_t: inv.x_t.clone(), h: inv.h.clone(), keys: inv.keys.clone() };
        cache_file::save(path, &rec, &self.cache_key(inv_steps), source, shape, h_shape)
    }

    /// The id under which the inversion of `image` by `inv_steps` steps is cached.
    pub fn inversion_id(&self, image: &Image, inv_steps: usize) -> String {
        cache::inversion_id(&self.info.model_key, inv_steps, &image.digest)
    }

    /// A cached inversion by id (from [`Pipeline::inversion_id`]); `None` when it was
    /// never made or has been evicted.
    pub fn cached(&self, id: &str) -> Option<Arc<Inversion>> {
        self.cache.get(id)
    }

    /// Protects the cached inversion `id` from one-off entries (see `cache.rs`), as
    /// if it had been used again; false when the cache does not hold it.
    pub fn keep(&self, id: &str) -> bool {
        self.cache.keep(id)
    }

    /// Sends one op to the engine thread and waits for it, calling `progress` once per
    /// step.
    fn call(&self, op: Op, progress: &mut dyn FnMut()) -> Result<Done> {
        let (reply, rx) = channel();
        let tx = self.tx.as_ref().ok_or_else(|| anyhow!("the pipeline is shut down"))?;
        tx.send(Msg::Op { op, reply }).map_err(|_| anyhow!("the engine thread has stopped"))?;
        loop {
            match rx.recv() {
                Ok(Reply::Tick) => progress(),
                Ok(Reply::Done(r)) => return r,
                Err(_) => bail!("the engine thread stopped during the work"),
            }
        }
    }

    /// DDIM inversion of one image by `inv_steps` steps (from the cache when it holds it).
    pub fn invert(&self, image: &Image, inv_steps: usize) -> Result<Arc<Inversion>> {
        Ok(self.invert_batch(&[image], inv_steps, &mut || {})?.remove(0))
    }

    /// [`Pipeline::invert`] of several images: the ones the cache does not hold are
    /// inverted (each distinct image once) in batches of up to `max_batch`, and cached.
    pub fn invert_batch(
        &self,
        images: &[&Image],
        inv_steps: usize,
        progress: &mut dyn FnMut(),
    ) -> Result<Vec<Arc<Inversion>>> {
        let s = Settings { inv_steps, ..Settings::default() };
        s.check_knobs(self.schedule.len())?;
        let ids: Vec<String> = images.iter().map(|im| self.inversion_id(im, inv_steps)).collect();
        let mut found: HashMap<&str, Arc<Inversion>> = HashMap::new();
        let mut todo: Vec<(&str, &Image)> = vec![];
        for (id, im) in ids.iter().zip(images) {
            if found.contains_key(id.as_str()) || todo.iter().any(|(t, _)| t == id) {
                continue;
            }
            let hit = if self.cache.capacity() > 0 { self.cache.get(id) } else { None };
            match hit {
                Some(inv) => drop(found.insert(id, inv)),
                None => todo.push((id, im)),
            }
        }
        if self.info.scheduling == Scheduling::Step && !todo.is_empty() {
            // One request per image; the engine thread caches what it inverts.
            // Already looked for in the cache: straight to the engine thread.
            let reqs =
                todo.iter().map(|(id, im)| Resolved::Invert { x0: im.x0.clone(), id: id.to_string(), inv_steps });
            for ((id, _), a) in todo.iter().zip(self.run_all(reqs.collect(), progress)?) {
                found.insert(id, a.into_inversion()?);
            }
            todo.clear();
        }
        for chunk in todo.chunks(self.info.max_batch) {
            let x0s = chunk.iter().map(|(_, im)| im.x0.clone()).collect();
            let Done::Inverted(invs) = self.call(Op::Invert { x0s, steps: inv_steps }, progress)? else {
                bail!("the engine answered an inversion with something else")
            };
            for ((id, _), inv) in chunk.iter().zip(invs) {
                let inv = Arc::new(inv);
                if self.cache.capacity() > 0 {
                    self.cache.insert(id, inv.clone());
                }
                found.insert(id, inv);
            }
        }
        Ok(ids.iter().map(|id| found[id.as_str()].clone()).collect())
    }

    /// Whether `inv` was made with `inv_steps` steps, for this model's images.
    fn check_inversion(&self, inv: &Inversion, inv_steps: usize, what: &str) -> Result<()> {
        ensure!(
            inv.keys == Inversion::keys_for(inv_steps),
            "the {what} inversion was made with {} steps, the settings ask for inv_steps {inv_steps}",
            inv.keys.len() + 1
        );
        ensure!(
            inv.x_t.len() == inv.x0.len() && inv.x0.len() == self.shapes().0.iter().product::<usize>(),
            "the {what} inversion does not match the model's image size"
        );
        Ok(())
    }

    /// A transfer's settings and mask, checked before any work.
    fn check_transfer(&self, s: &Settings, mask: Option<&Mask>) -> Result<()> {
        s.validate(&self.schedule)?;
        if let Some(m) = mask {
            ensure!(
                m.0.len() == self.info.h_size * self.info.h_size,
                "the mask must cover the {0}x{0} h grid",
                self.info.h_size
            );
        }
        Ok(())
    }

    /// Submits a request to the step scheduler and returns at once (inputs are checked
    /// first: a bad request is an error here, not in the ticket). The request joins
    /// the running batch at the next step; the [`Ticket`] yields its progress and
    /// answer, and dropping it before the answer cancels the request. Images are
    /// inverted first unless the cache holds them; an inversion found in the cache is
    /// answered at once.
    pub fn submit(&self, req: Request) -> Result<Ticket> {
        let (tx, rx) = channel();
        let state = Arc::new(TicketState::default());
        let lookup = |id: &str| if self.cache.capacity() > 0 { self.cache.get(id) } else { None };
        let resolved = match req {
            Request::Invert { image, inv_steps } => {
                Settings { inv_steps, ..Settings::default() }.check_knobs(self.schedule.len())?;
                let id = self.inversion_id(&image, inv_steps);
                if let Some(inversion) = lookup(&id) {
                    let _ = tx.send((0, Event::Done(Ok(Answer::Inversion { inversion, id, batch: 0 }))));
                    return Ok(Ticket::new(state, rx));
                }
                Resolved::Invert { x0: image.x0, id, inv_steps }
            }
            Request::Transfer { pair, settings, mask } => {
                self.check_transfer(&settings, mask.as_ref())?;
                let side = |src: Source, what: &str| -> Result<Side> {
                    Ok(match src {
                        Source::Inversion(inv) => {
                            self.check_inversion(&inv, settings.inv_steps, what)?;
                            Side::Ready(inv)
                        }
                        Source::Image(im) => {
                            let id = self.inversion_id(&im, settings.inv_steps);
                            match lookup(&id) {
                                Some(inv) => Side::Ready(inv),
                                None => Side::Invert { x0: im.x0, id },
                            }
                        }
                    })
                };
                let content = side(pair.content, "content")?;
                let style = side(pair.style, "style")?;
                Resolved::Transfer { content, style, settings, mask: mask.map(|m| m.0) }
            }
        };
        self.send(resolved, 0, &tx, &state)?;
        Ok(Ticket::new(state, rx))
    }

    /// Sends a checked request to the engine thread, its events tagged `tag` on a
    /// channel that several requests may share.
    fn send(
        &self,
        resolved: Resolved,
        tag: usize,
        events: &Sender<(usize, Event)>,
        state: &Arc<TicketState>,
    ) -> Result<()> {
        let tx = self.tx.as_ref().ok_or_else(|| anyhow!("the pipeline is shut down"))?;
        let sub = Submitted { req: resolved, state: state.clone(), events: events.clone(), tag };
        tx.send(Msg::Submit(sub)).map_err(|_| anyhow!("the engine thread has stopped"))
    }

    /// Sends `reqs` and waits for all their answers, in order; `progress` is called
    /// once per step of the slowest. The first error cancels the rest.
    fn run_all(&self, reqs: Vec<Resolved>, progress: &mut dyn FnMut()) -> Result<Vec<Answer>> {
        let (tx, rx) = channel::<(usize, Event)>();
        let states: Vec<Arc<TicketState>> = reqs.iter().map(|_| Arc::default()).collect();
        let cancel_all = || states.iter().for_each(|s| s.cancelled.store(true, Relaxed));
        for (k, r) in reqs.into_iter().enumerate() {
            if let Err(e) = self.send(r, k, &tx, &states[k]) {
                cancel_all();
                return Err(e);
            }
        }
        drop(tx);
        let mut answers: BTreeMap<usize, Answer> = BTreeMap::new();
        let mut shown = 0;
        while answers.len() < states.len() {
            match rx.recv() {
                Ok((_, Event::Progress)) => {}
                Ok((k, Event::Done(Ok(a)))) => drop(answers.insert(k, a)),
                Ok((_, Event::Done(Err(e)))) => {
                    cancel_all();
                    return Err(e);
                }
                Err(_) => bail!("the engine thread stopped during the work"),
            }
            // A finished request counts all its steps done.
            let slowest = states.iter().map(|s| s.done.load(Relaxed)).min().unwrap_or(0);
            while shown < slowest {
                progress();
                shown += 1;
            }
        }
        Ok(answers.into_values().collect())
    }

    /// One DiffStyle transfer: `content`'s h injected into the generation from `style`'s
    /// latent. Images are inverted first (or found in the cache).
    pub fn transfer(&self, content: &Source, style: &Source, s: &Settings, mask: Option<&Mask>) -> Result<Output> {
        let pair = Pair { content: content.clone(), style: style.clone() };
        Ok(self.transfer_batch(&[pair], s, mask, &mut || {})?.remove(0))
    }

    /// Transfers of several pairs with the same settings and mask: the images among the
    /// sources are inverted (each once), then the pairs run in batches of up to
    /// `max_batch`. Every output is bit-identical to what [`Pipeline::transfer`] gives for
    /// its pair alone. `progress` is called once per inversion or generation step.
    pub fn transfer_batch(
        &self,
        pairs: &[Pair],
        s: &Settings,
        mask: Option<&Mask>,
        progress: &mut dyn FnMut(),
    ) -> Result<Vec<Output>> {
        self.check_transfer(s, mask)?;
        let images: Vec<&Image> = pairs
            .iter()
            .flat_map(|p| [&p.content, &p.style])
            .filter_map(|src| match src {
                Source::Image(im) => Some(im),
                Source::Inversion(_) => None,
            })
            .collect();
        let mut inverted = self.invert_batch(&images, s.inv_steps, progress)?.into_iter();
        let mut resolve = |src: &Source, what: &str| -> Result<Arc<Inversion>> {
            let inv = match src {
                Source::Image(_) => inverted.next().expect("one inversion per image"),
                Source::Inversion(inv) => inv.clone(),
            };
            self.check_inversion(&inv, s.inv_steps, what)?;
            Ok(inv)
        };
        let mut resolved = Vec::with_capacity(pairs.len());
        for p in pairs {
            let c = resolve(&p.content, "content")?;
            let st = resolve(&p.style, "style")?;
            resolved.push((c, st));
        }
        if self.info.scheduling == Scheduling::Step {
            let reqs = resolved
                .into_iter()
                .map(|(c, st)| Resolved::Transfer {
                    content: Side::Ready(c),
                    style: Side::Ready(st),
                    settings: s.clone(),
                    mask: mask.map(|m| m.0.clone()),
                })
                .collect();
            return self.run_all(reqs, progress)?.into_iter().map(Answer::into_output).collect();
        }
        let mask = mask.map(|m| m.0.clone());
        let mut out = Vec::with_capacity(pairs.len());
        for chunk in resolved.chunks(self.info.max_batch) {
            let op = Op::Generate {
                styles: chunk.iter().map(|(_, st)| st.clone()).collect(),
                contents: chunk.iter().map(|(c, _)| c.clone()).collect(),
                settings: s.clone(),
                mask: mask.clone(),
            };
            let Done::Generated(xs) = self.call(op, progress)? else {
                bail!("the engine answered a generation with something else")
            };
            out.extend(xs.into_iter().map(|x| Output { x, size: self.info.sample_size }));
        }
        Ok(out)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Closing the inbox ends the engine thread after its current op.
        self.tx.take();
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}
