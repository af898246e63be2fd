//! The engine thread: it owns the backend, the U-Net's weights on it and the engines
//! (activation memory for each batch size), made once, and runs one batched inversion
//! or generation at a time for whoever sends it one. Keeping them on one thread gives
//! the [`super::Pipeline`] handle a plain owned type (the engines borrow the backend)
//! and keeps device work off the callers' threads (an async runtime's, say).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context, Result};

use super::device::{pick, DeviceChoice};
use crate::backend::Backend;
use crate::diffusion::method::{Counts, Engine, Inversion, Settings};
use crate::dtype::Precision;
use crate::model::unet::UNet;
use crate::model::weights::LoadedModel;

/// One batch of work: at most the largest engine's batch.
pub(super) enum Op {
    Invert {
        x0s: Vec<Arc<[f32]>>,
        steps: usize,
    },
    Generate {
        styles: Vec<Arc<Inversion>>,
        contents: Vec<Arc<Inversion>>,
        settings: Settings,
        mask: Option<Arc<[f32]>>,
    },
}

pub(super) enum Done {
    Inverted(Vec<Inversion>),
    Generated(Vec<Vec<f32>>),
}

/// What the engine thread sends back for an op: a tick per step, then the result.
pub(super) enum Reply {
    Tick,
    Done(Result<Done>),
}

pub(super) struct Msg {
    pub op: Op,
    pub reply: Sender<Reply>,
}

/// What the engine thread reports without being asked (read by metrics at any time,
/// even while an op runs).
#[derive(Default)]
pub(super) struct Shared {
    /// Peak device memory in bytes, `u64::MAX` when the backend does not know.
    pub peak_device_bytes: AtomicU64,
    /// False once the thread has stopped.
    pub alive: AtomicBool,
    /// Work done so far, over every engine.
    pub counts: Mutex<Counts>,
}

pub(super) struct Setup {
    pub device: DeviceChoice,
    pub precision: Precision,
    pub threads: usize,
    pub verbose: bool,
    /// The engines' batch sizes, ascending.
    pub batches: Vec<usize>,
}

/// Starts the engine thread and waits until it is ready (weights uploaded, every
/// engine allocated) or has failed; returns its inbox and its description of the device.
pub(super) fn spawn(
    model: LoadedModel,
    setup: Setup,
    shared: Arc<Shared>,
) -> Result<(Sender<Msg>, JoinHandle<()>, String)> {
    let (tx, rx) = channel::<Msg>();
    let (ready_tx, ready_rx) = channel::<Result<String>>();
    let sh = shared.clone();
    let handle = std::thread::Builder::new()
        .name("diffstyle-engine".into())
        .spawn(move || {
            sh.alive.store(true, Relaxed);
            match pick(setup.device, setup.precision, setup.threads, setup.verbose) {
                Ok(picked) => crate::with_backend!(picked, |be| run(be, model, &setup, rx, &ready_tx, &sh)),
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
            sh.alive.store(false, Relaxed);
        })
        .context("cannot start the engine thread")?;
    match ready_rx.recv() {
        Ok(Ok(device)) => Ok((tx, handle, device)),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => {
            let why = handle.join().err().map(|p| panic_text(&*p)).unwrap_or_default();
            bail!("the engine thread stopped while starting {why}")
        }
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    let s = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
    format!("(panic: {})", s.unwrap_or_else(|| "unknown".into()))
}

fn run<B: Backend>(
    be: &B,
    model: LoadedModel,
    setup: &Setup,
    rx: Receiver<Msg>,
    ready: &Sender<Result<String>>,
    shared: &Shared,
) {
    let unet = match UNet::new(be, &model, setup.precision) {
        Ok(u) => u,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // The backend holds the weights now: the host copy (as large as the model) goes.
    let LoadedModel { schedule, source, tensors, .. } = model;
    drop(tensors);
    let mut engines = Vec::with_capacity(setup.batches.len());
    for &n in &setup.batches {
        match Engine::with_batch(be, &unet, &schedule, n).with_context(|| format!("model {source} with a batch of {n}"))
        {
            Ok(e) => engines.push(e),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        }
    }
    let report_memory = || {
        let peak = be.peak_device_bytes().map_or(u64::MAX, |b| b as u64);
        shared.peak_device_bytes.store(peak, Relaxed);
    };
    report_memory();
    if ready.send(Ok(be.describe())).is_err() {
        return;
    }
    for Msg { op, reply } in rx {
        let done = catch_unwind(AssertUnwindSafe(|| execute(&mut engines, op, &reply, shared)))
            .unwrap_or_else(|p| Err(anyhow!("the engine failed {}", panic_text(&*p))));
        report_memory();
        // The caller may have gone away meanwhile: nothing to do then.
        let _ = reply.send(Reply::Done(done));
    }
}

fn execute<B: Backend>(engines: &mut [Engine<'_, B>], op: Op, reply: &Sender<Reply>, shared: &Shared) -> Result<Done> {
    let n = match &op {
        Op::Invert { x0s, .. } => x0s.len(),
        Op::Generate { contents, .. } => contents.len(),
    };
    // The smallest engine that holds the batch: a smaller batch than the engine's is
    // padded, and padding is computed like real work.
    let max = engines.last().map_or(0, |e| e.batch());
    let Some(eng) = engines.iter_mut().find(|e| e.batch() >= n) else {
        bail!("a batch of {n} for engines of at most {max}")
    };
    let mut tick = || {
        let _ = reply.send(Reply::Tick);
    };
    let done = match op {
        Op::Invert { x0s, steps } => {
            let xs: Vec<&[f32]> = x0s.iter().map(|x| &x[..]).collect();
            Done::Inverted(eng.invert_batch(&xs, steps, &mut tick)?)
        }
        Op::Generate { styles, contents, settings, mask } => {
            let xs: Vec<&[f32]> = styles.iter().map(|s| s.x_t.as_slice()).collect();
            let cs: Vec<&Inversion> = contents.iter().map(|c| &**c).collect();
            Done::Generated(eng.transfer_batch(&xs, &cs, &settings, mask.as_deref(), &mut tick)?)
        }
    };
    let c = std::mem::take(&mut eng.counts);
    let mut total = shared.counts.lock().unwrap_or_else(|p| p.into_inner());
    total.encoder += c.encoder;
    total.decoder += c.decoder;
    total.noisy_steps += c.noisy_steps;
    total.mixed_steps += c.mixed_steps;
    Ok(done)
}
