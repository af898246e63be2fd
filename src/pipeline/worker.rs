//! The engine thread: it owns the backend, the U-Net's weights on it, the step
//! scheduler's [`Stepper`] and the batch engines (activation memory for each batch
//! size), made once. Submitted requests join the stepper's running set between steps
//! (`scheduler.rs` keeps their books); a batch op (batch scheduling) runs to its end
//! before the next step. Keeping them on one thread gives the [`super::Pipeline`]
//! handle a plain owned type (the engines borrow the backend) and keeps device work
//! off the callers' threads (an async runtime's, say).

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context, Result};

use super::cache::InversionCache;
use super::device::{pick, DeviceChoice, Picked};
use super::scheduler::{Scheduler, Submitted};
use crate::backend::Backend;
use crate::diffusion::method::{Counts, Engine, Inversion, Settings};
use crate::diffusion::steps::Stepper;
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

pub(super) enum Msg {
    /// A batch op, run to its end.
    Op { op: Op, reply: Sender<Reply> },
    /// A request for the step scheduler.
    Submit(Submitted),
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
    /// Requests cancelled before their answer (step scheduler).
    pub cancelled: AtomicU64,
    /// Submitted requests none of whose work has started.
    pub waiting: AtomicUsize,
    /// Stepper steps run, by the number of jobs they advanced.
    pub steps: Mutex<BTreeMap<usize, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn add_counts(&self, c: Counts) {
        let mut total = lock(&self.counts);
        total.encoder += c.encoder;
        total.decoder += c.decoder;
        total.noisy_steps += c.noisy_steps;
        total.mixed_steps += c.mixed_steps;
    }
}

pub(super) struct Setup {
    pub device: DeviceChoice,
    pub precision: Precision,
    pub threads: usize,
    pub verbose: bool,
    /// The batch engines' sizes, ascending (none when only the stepper runs).
    pub batches: Vec<usize>,
    /// The stepper's lanes: the most jobs in one step.
    pub lanes: usize,
    /// Where finished inversions of submitted requests go.
    pub cache: Arc<InversionCache>,
    /// Long jobs' share of the steps while shorter ones run (`PipelineOptions::long_every`;
    /// `None`: 4 on the CPU, 1 on a GPU).
    pub long_every: Option<usize>,
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
                Ok(picked) => {
                    // A CPU step costs about the sum of its samples, a GPU step is expected
                    // to cost little more than one: only on the CPU do long jobs yield by
                    // default.
                    let cpu = matches!(picked, Picked::Cpu(_));
                    let long_every = setup.long_every.unwrap_or(if cpu { 4 } else { 1 });
                    crate::with_backend!(picked, |be| run(be, model, &setup, long_every, rx, &ready_tx, &sh))
                }
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
    long_every: usize,
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
    let mut stepper = match Stepper::new(be, &unet, &schedule, setup.lanes) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e.context(format!("model {source} with a step batch of {}", setup.lanes))));
            return;
        }
    };
    report_memory();
    if ready.send(Ok(be.describe())).is_err() {
        return;
    }
    let mut sched = Scheduler::new(setup.cache.clone(), schedule.clone(), unet.arch.sample_size, long_every);
    let mut open = true;
    while open || !sched.is_idle() {
        // Take what has arrived; wait only when there is nothing to step.
        loop {
            let msg =
                if sched.is_idle() && open { rx.recv().map_err(|_| TryRecvError::Disconnected) } else { rx.try_recv() };
            match msg {
                Ok(Msg::Submit(s)) => sched.add(s),
                Ok(Msg::Op { op, reply }) => {
                    let done = catch_unwind(AssertUnwindSafe(|| execute(&mut engines, op, &reply, shared)))
                        .unwrap_or_else(|p| Err(anyhow!("the engine failed {}", panic_text(&*p))));
                    report_memory();
                    // The caller may have gone away meanwhile: nothing to do then.
                    let _ = reply.send(Reply::Done(done));
                }
                Err(TryRecvError::Empty) => break,
                // The pipeline is gone: what is open still finishes (or is cancelled).
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        sched.prune(&mut stepper);
        sched.admit(&mut stepper);
        sched.plan(&mut stepper);
        let batch = stepper.stepping();
        if batch > 0 {
            let stepped = catch_unwind(AssertUnwindSafe(|| stepper.step(&mut |_| {})))
                .unwrap_or_else(|p| Err(anyhow!("the engine failed {}", panic_text(&*p))));
            shared.add_counts(std::mem::take(&mut stepper.counts));
            *lock(&shared.steps).entry(batch).or_default() += 1;
            match stepped {
                Ok(done) => sched.stepped(&mut stepper, batch, done),
                // One error for the step: every job in it fails (their requests get it).
                Err(e) => sched.fail_running(&mut stepper, &e),
            }
            report_memory();
        } else {
            // Admissions without a step still change who waits.
            sched.tell_progress(&stepper);
        }
        shared.cancelled.store(sched.report.cancelled, Relaxed);
        shared.waiting.store(sched.report.waiting, Relaxed);
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
    shared.add_counts(std::mem::take(&mut eng.counts));
    Ok(done)
}
