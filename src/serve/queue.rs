//! `--schedule batch`: the bounded job queue between the HTTP handlers and the engine,
//! and the batcher thread that drains it: it takes the oldest job, waits up to the
//! batch window for compatible ones (transfers with the same settings and mask;
//! inversions with the same steps), and runs them as one batch on the pipeline. (With
//! `--schedule step` requests go to the pipeline's step scheduler instead: `api.rs`.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::metrics::Metrics;
use crate::diffusion::method::Inversion;
use crate::diffusion::method::Settings;
use crate::pipeline::cache::inversion_bytes;
use crate::pipeline::{Image, Mask, Pair, Pipeline};

pub enum Work {
    Transfer { pair: Pair, settings: Settings, mask: Option<Mask> },
    Invert { image: Image, inv_steps: usize },
}

/// What a job yields: the PNG and the size of the batch it ran in, or an inversion id.
pub enum Answer {
    Png { png: Vec<u8>, batch: usize },
    Inverted { id: String },
}

pub struct Job {
    pub work: Work,
    pub reply: oneshot::Sender<Result<Answer, String>>,
}

impl Job {
    /// Whether `self` may run in one batch with `other`.
    fn fits(&self, other: &Job) -> bool {
        match (&self.work, &other.work) {
            (Work::Transfer { settings: a, mask: ma, .. }, Work::Transfer { settings: b, mask: mb, .. }) => {
                a == b && ma == mb
            }
            (Work::Invert { inv_steps: a, .. }, Work::Invert { inv_steps: b, .. }) => a == b,
            _ => false,
        }
    }

    /// The client went away: nothing to compute for it.
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Full,
    Closed,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    closed: bool,
}

pub struct Queue {
    state: Mutex<State>,
    wake: Condvar,
    capacity: usize,
    /// Jobs dropped because their client went away before they ran.
    abandoned: AtomicU64,
}

impl Queue {
    pub fn new(capacity: usize) -> Self {
        Self { state: Mutex::default(), wake: Condvar::new(), capacity, abandoned: AtomicU64::new(0) }
    }

    pub fn abandoned(&self) -> u64 {
        self.abandoned.load(Relaxed)
    }

    /// Keeps the jobs whose clients still wait, counting the others.
    fn drop_abandoned(&self, jobs: &mut VecDeque<Job>) {
        let before = jobs.len();
        jobs.retain(|j| !j.abandoned());
        self.abandoned.fetch_add((before - jobs.len()) as u64, Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn depth(&self) -> usize {
        self.lock().jobs.len()
    }

    pub fn push(&self, job: Job) -> Result<(), Refused> {
        let mut s = self.lock();
        if s.closed {
            return Err(Refused::Closed);
        }
        if s.jobs.len() >= self.capacity {
            // Abandoned jobs do not hold places.
            self.drop_abandoned(&mut s.jobs);
            if s.jobs.len() >= self.capacity {
                return Err(Refused::Full);
            }
        }
        s.jobs.push_back(job);
        self.wake.notify_all();
        Ok(())
    }

    /// No more jobs are taken; those queued still run.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// The next batch: the oldest job and up to `max - 1` compatible ones, waiting at
    /// most `window` for them. `None` once closed and empty.
    fn next_batch(&self, max: usize, window: Duration) -> Option<Vec<Job>> {
        let mut s = self.lock();
        loop {
            while let Some(j) = s.jobs.pop_front() {
                if !j.abandoned() {
                    return Some(self.fill(s, j, max, window));
                }
                self.abandoned.fetch_add(1, Relaxed);
            }
            if s.closed {
                return None;
            }
            s = self.wake.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn fill<'a>(&'a self, mut s: MutexGuard<'a, State>, first: Job, max: usize, window: Duration) -> Vec<Job> {
        let deadline = Instant::now() + window;
        loop {
            let fitting = s.jobs.iter().filter(|j| first.fits(j) && !j.abandoned()).count();
            let now = Instant::now();
            if fitting + 1 >= max || s.closed || now >= deadline {
                break;
            }
            s = self.wake.wait_timeout(s, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        let mut batch = vec![];
        let mut rest = VecDeque::with_capacity(s.jobs.len());
        for j in s.jobs.drain(..) {
            if j.abandoned() {
                self.abandoned.fetch_add(1, Relaxed);
                continue;
            }
            if batch.len() + 1 < max && first.fits(&j) {
                batch.push(j);
            } else {
                rest.push_back(j);
            }
        }
        s.jobs = rest;
        batch.insert(0, first);
        batch
    }
}

/// The batcher: runs batches until the queue is closed and empty.
pub fn run_batches(queue: &Queue, p: &Pipeline, window: Duration, metrics: &Metrics) {
    let max = p.info().max_batch;
    while let Some(batch) = queue.next_batch(max, window) {
        let kind = match batch[0].work {
            Work::Transfer { .. } => "transfer",
            Work::Invert { .. } => "invert",
        };
        metrics.batch(kind, batch.len());
        let answers = run(p, &batch);
        for (job, a) in batch.into_iter().zip(answers) {
            let _ = job.reply.send(a);
        }
    }
}

/// One batch; when it fails as a whole, each job alone, so that one job's failure
/// (non-finite values, say) is not every job's.
fn run(p: &Pipeline, batch: &[Job]) -> Vec<Result<Answer, String>> {
    match run_together(p, batch) {
        Ok(a) => a.into_iter().map(Ok).collect(),
        Err(e) if batch.len() == 1 => vec![Err(format!("{e:#}"))],
        Err(_) => batch
            .iter()
            .map(|j| run_together(p, std::slice::from_ref(j)).map(|mut a| a.remove(0)).map_err(|e| format!("{e:#}")))
            .collect(),
    }
}

fn run_together(p: &Pipeline, batch: &[Job]) -> anyhow::Result<Vec<Answer>> {
    match &batch[0].work {
        Work::Transfer { settings, mask, .. } => {
            let pairs: Vec<Pair> = batch
                .iter()
                .map(|j| match &j.work {
                    Work::Transfer { pair, .. } => pair.clone(),
                    Work::Invert { .. } => unreachable!("batches hold one kind"),
                })
                .collect();
            let outs = p.transfer_batch(&pairs, settings, mask.as_ref(), &mut || {})?;
            outs.iter().map(|o| Ok(Answer::Png { png: o.png()?, batch: batch.len() })).collect()
        }
        Work::Invert { inv_steps, .. } => {
            let images: Vec<&Image> = batch
                .iter()
                .map(|j| match &j.work {
                    Work::Invert { image, .. } => image,
                    Work::Transfer { .. } => unreachable!("batches hold one kind"),
                })
                .collect();
            let invs = p.invert_batch(&images, *inv_steps, &mut || {})?;
            images.iter().zip(invs).map(|(im, inv)| inverted(p, p.inversion_id(im, *inv_steps), &inv)).collect()
        }
    }
}

/// The answer to an inversion request: its id, which is only useful while the cache
/// holds the inversion, so it is kept there.
pub fn inverted(p: &Pipeline, id: String, inv: &Inversion) -> anyhow::Result<Answer> {
    anyhow::ensure!(
        p.keep(&id),
        "the inversion ({:.1} MiB) is larger than the whole inversion cache (--cache-mib)",
        inversion_bytes(inv) as f64 / 1048576.0
    );
    Ok(Answer::Inverted { id })
}

/// Starts the batcher thread.
pub fn spawn(
    queue: Arc<Queue>,
    p: Arc<Pipeline>,
    window: Duration,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("diffstyle-batcher".into())
        .spawn(move || run_batches(&queue, &p, window, &metrics))
}
