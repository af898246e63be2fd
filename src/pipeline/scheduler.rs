//! The step scheduler's bookkeeping on the engine thread (issue 25): submitted
//! requests become [`Stepper`] jobs — a transfer is the inversions of its images not
//! in the cache, then its generation; an inversion request is one job — admitted in
//! the requests' order of arrival as lanes free up, between steps. An inversion that
//! several requests wait for runs once. A cancelled request (its ticket dropped, or
//! cancelled) leaves at the next step, and so do its jobs unless another request
//! still needs them; the other jobs go on unchanged.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use anyhow::{anyhow, Result};

use super::cache::InversionCache;
use super::ticket::{Answer, Cancelled, Event, TicketState};
use super::Output;
use crate::backend::Backend;
use crate::diffusion::method::{GenStep, Inversion, Settings};
use crate::diffusion::steps::{Finished, JobId, Stepper, Task};
use crate::diffusion::timesteps::seq;
use crate::model::schedule::Schedule;

/// One side of a transfer as the pipeline resolved it: an inversion at hand, or an
/// image to invert (`id`: its inversion's cache id).
pub(super) enum Side {
    Ready(Arc<Inversion>),
    Invert { x0: Arc<[f32]>, id: String },
}

pub(super) enum Resolved {
    Transfer { content: Side, style: Side, settings: Settings, mask: Option<Arc<[f32]>> },
    Invert { x0: Arc<[f32]>, id: String, inv_steps: usize },
}

/// A request on its way to the engine thread.
pub(super) struct Submitted {
    pub req: Resolved,
    pub state: Arc<TicketState>,
    pub events: Sender<(usize, Event)>,
    pub tag: usize,
}

enum Slot {
    Ready(Arc<Inversion>),
    Waiting(String),
}

enum Want {
    Transfer { content: Slot, style: Slot, settings: Settings, mask: Option<Arc<[f32]>> },
    Invert,
}

struct Req {
    state: Arc<TicketState>,
    events: Sender<(usize, Event)>,
    tag: usize,
    want: Want,
    /// Steps of this request's jobs that have finished.
    finished: usize,
}

#[derive(PartialEq, Eq)]
enum Key {
    /// An inversion, by its cache id.
    Inversion(String),
    /// The generation of request `serial`.
    Transfer(u64),
}

/// A stepper job, waiting (`task`) or running (`job`), and the requests that need it.
struct Work {
    key: Key,
    task: Option<Task>,
    job: Option<JobId>,
    /// Its steps in all.
    len: usize,
    subs: Vec<u64>,
    /// The most jobs that ran a step together with it.
    peak: usize,
}

/// What the scheduler tells the engine thread's owner (metrics).
#[derive(Default)]
pub(super) struct Report {
    /// Requests cancelled by now.
    pub cancelled: u64,
    /// Requests none of whose work has started.
    pub waiting: usize,
}

/// A job is long next to the others when its request has more than this many times the
/// steps left of the request closest to done.
const LONG_RATIO: usize = 4;

pub(super) struct Scheduler {
    reqs: BTreeMap<u64, Req>,
    works: Vec<Work>,
    serial: u64,
    /// While shorter work runs, long jobs advance only on every `long_every`-th step
    /// (1: every job advances every step).
    long_every: usize,
    /// Steps planned so far.
    planned: u64,
    cache: Arc<InversionCache>,
    sched: Schedule,
    sample_size: usize,
    pub report: Report,
}

impl Scheduler {
    pub fn new(cache: Arc<InversionCache>, sched: Schedule, sample_size: usize, long_every: usize) -> Self {
        Self {
            reqs: BTreeMap::new(),
            works: vec![],
            serial: 0,
            long_every: long_every.max(1),
            planned: 0,
            cache,
            sched,
            sample_size,
            report: Report::default(),
        }
    }

    /// Chooses the jobs the next step advances. Where a step costs about the sum of its
    /// samples (the CPU), a long request that shares every step with short ones doubles
    /// their time; so, with `long_every` > 1, a job whose request has over `LONG_RATIO`
    /// times the steps left of the closest-to-done request sits out all but every
    /// `long_every`-th step while such shorter work runs (it never starves: it advances
    /// at least that often). The shortest job always advances; results do not change.
    pub fn plan<B: Backend>(&mut self, st: &mut Stepper<'_, B>) {
        self.planned += 1;
        let left = |w: &Work| {
            w.subs
                .iter()
                .filter_map(|s| self.reqs.get(s))
                .map(|r| r.state.total.load(Relaxed).saturating_sub(r.state.done.load(Relaxed)))
                .min()
                .unwrap_or(0)
        };
        let running: Vec<(JobId, usize)> = self.works.iter().filter_map(|w| Some((w.job?, left(w)))).collect();
        let shortest = running.iter().map(|&(_, l)| l).min().unwrap_or(0);
        let turn = self.planned.is_multiple_of(self.long_every as u64);
        for (id, l) in running {
            st.hold(id, !turn && l > LONG_RATIO * shortest.max(1));
        }
    }

    /// No request is open.
    pub fn is_idle(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Takes a request (its inputs were checked by the pipeline).
    pub fn add(&mut self, s: Submitted) {
        let serial = self.serial;
        self.serial += 1;
        let (want, total) = match s.req {
            Resolved::Invert { x0, id, inv_steps } => {
                let task = Task::Invert { x0, steps: inv_steps };
                let total = self.task_len(&task);
                self.subscribe(Key::Inversion(id), task, serial);
                (Want::Invert, total)
            }
            Resolved::Transfer { content, style, settings, mask } => {
                let mut total = GenStep::all(&settings, &self.sched).len();
                let mut slot = |side: Side, this: &mut Self| match side {
                    Side::Ready(inv) => Slot::Ready(inv),
                    Side::Invert { x0, id } => {
                        let key = Key::Inversion(id.clone());
                        // The same image on both sides is one inversion (and counted once).
                        let task = Task::Invert { x0, steps: settings.inv_steps };
                        if !this.works.iter().any(|w| w.key == key && w.subs.contains(&serial)) {
                            total += this.task_len(&task);
                        }
                        this.subscribe(key, task, serial);
                        Slot::Waiting(id)
                    }
                };
                let content = slot(content, self);
                let style = slot(style, self);
                (Want::Transfer { content, style, settings, mask }, total)
            }
        };
        s.state.total.store(total, Relaxed);
        let req = Req { state: s.state, events: s.events, tag: s.tag, want, finished: 0 };
        self.reqs.insert(serial, req);
        self.start_transfer(serial);
    }

    /// The steps of a job: an inversion's (one per time but the last), a generation's.
    fn task_len(&self, task: &Task) -> usize {
        match task {
            Task::Invert { steps, .. } => seq(*steps).len() - 1,
            Task::Transfer { settings, .. } => GenStep::all(settings, &self.sched).len(),
        }
    }

    /// Request `serial` needs the job `key` (made from `task` unless it exists).
    fn subscribe(&mut self, key: Key, task: Task, serial: u64) {
        if let Some(w) = self.works.iter_mut().find(|w| w.key == key) {
            if !w.subs.contains(&serial) {
                w.subs.push(serial);
            }
            return;
        }
        let len = self.task_len(&task);
        self.works.push(Work { key, task: Some(task), job: None, len, subs: vec![serial], peak: 0 });
    }

    /// Queues request `serial`'s generation once both its inversions are at hand.
    fn start_transfer(&mut self, serial: u64) {
        let Some(Req { want: Want::Transfer { content, style, settings, mask }, .. }) = self.reqs.get(&serial) else {
            return;
        };
        let (Slot::Ready(c), Slot::Ready(s)) = (content, style) else { return };
        let task = Task::Transfer {
            style_xt: s.x_t.clone().into(),
            content: c.clone(),
            settings: settings.clone(),
            mask: mask.clone(),
        };
        self.subscribe(Key::Transfer(serial), task, serial);
    }

    /// Closes request `serial` with `answer`; its jobs that no other request needs leave
    /// the stepper.
    fn close<B: Backend>(&mut self, st: &mut Stepper<'_, B>, serial: u64, answer: Result<Answer>) {
        if let Some(r) = self.reqs.remove(&serial) {
            if answer.is_ok() {
                r.state.done.store(r.state.total.load(Relaxed), Relaxed);
            }
            // The ticket may be gone already (a cancelled request): nothing to tell then.
            let _ = r.events.send((r.tag, Event::Done(answer)));
        }
        for w in &mut self.works {
            w.subs.retain(|&s| s != serial);
        }
        self.works.retain(|w| {
            if !w.subs.is_empty() {
                return true;
            }
            if let Some(id) = w.job {
                st.cancel(id);
            }
            false
        });
    }

    /// Drops the cancelled requests (and the jobs only they needed).
    pub fn prune<B: Backend>(&mut self, st: &mut Stepper<'_, B>) {
        let gone: Vec<u64> =
            self.reqs.iter().filter(|(_, r)| r.state.cancelled.load(Relaxed)).map(|(&s, _)| s).collect();
        for s in gone {
            self.report.cancelled += 1;
            self.close(st, s, Err(anyhow!(Cancelled)));
        }
    }

    /// Starts waiting jobs while lanes are free, the oldest request's first.
    pub fn admit<B: Backend>(&mut self, st: &mut Stepper<'_, B>) {
        loop {
            let next = (0..self.works.len())
                .filter(|&k| self.works[k].task.is_some())
                .min_by_key(|&k| self.works[k].subs.iter().min().copied());
            let Some(k) = next else { return };
            let task = self.works[k].task.take().expect("a waiting job");
            match st.admit(task.clone()) {
                Ok(Some(id)) => self.works[k].job = Some(id),
                Ok(None) => {
                    self.works[k].task = Some(task);
                    return;
                }
                Err(e) => self.fail(st, k, &e),
            }
        }
    }

    /// Every request that needs work `k` fails with `e`.
    fn fail<B: Backend>(&mut self, st: &mut Stepper<'_, B>, k: usize, e: &anyhow::Error) {
        let msg = format!("{e:#}");
        for s in self.works[k].subs.clone() {
            self.close(st, s, Err(anyhow!("{msg}")));
        }
    }

    /// Every request with a running job fails with `e` (a step failed as a whole).
    pub fn fail_running<B: Backend>(&mut self, st: &mut Stepper<'_, B>, e: &anyhow::Error) {
        while let Some(k) = self.works.iter().position(|w| w.job.is_some()) {
            self.fail(st, k, e);
        }
    }

    /// After a step that ran `batch` jobs: answers what finished, queues the
    /// generations whose inversions are done, and tells every ticket its progress.
    pub fn stepped<B: Backend>(&mut self, st: &mut Stepper<'_, B>, batch: usize, done: Vec<(JobId, Result<Finished>)>) {
        for w in &mut self.works {
            if w.job.is_some_and(|id| !st.is_held(id)) {
                w.peak = w.peak.max(batch);
            }
        }
        for (id, result) in done {
            let Some(k) = self.works.iter().position(|w| w.job == Some(id)) else { continue };
            match result {
                Err(e) => self.fail(st, k, &e),
                Ok(fin) => {
                    let w = self.works.remove(k);
                    for &s in &w.subs {
                        if let Some(r) = self.reqs.get_mut(&s) {
                            r.finished += w.len;
                        }
                    }
                    self.finished(st, w, fin);
                }
            }
        }
        self.tell_progress(st);
    }

    fn finished<B: Backend>(&mut self, st: &mut Stepper<'_, B>, w: Work, fin: Finished) {
        match (w.key, fin) {
            (Key::Transfer(serial), Finished::Generated(x)) => {
                let output = Output { x, size: self.sample_size };
                self.close(st, serial, Ok(Answer::Output { output, batch: w.peak }));
            }
            (Key::Inversion(id), Finished::Inverted(inv)) => {
                let inv = Arc::new(inv);
                if self.cache.capacity() > 0 {
                    self.cache.insert(&id, inv.clone());
                }
                for s in w.subs {
                    let Some(r) = self.reqs.get_mut(&s) else { continue };
                    if let Want::Transfer { content, style, .. } = &mut r.want {
                        for slot in [content, style] {
                            if matches!(slot, Slot::Waiting(w) if *w == id) {
                                *slot = Slot::Ready(inv.clone());
                            }
                        }
                        self.start_transfer(s);
                    } else {
                        let answer = Answer::Inversion { inversion: inv.clone(), id: id.clone(), batch: w.peak };
                        self.close(st, s, Ok(answer));
                    }
                }
            }
            (_, _) => {
                for s in w.subs {
                    self.close(st, s, Err(anyhow!("the engine finished a job with the wrong kind of result")));
                }
            }
        }
    }

    /// Updates each request's steps done (sending an event where it changed) and the
    /// count of requests still waiting to start.
    pub fn tell_progress<B: Backend>(&mut self, st: &Stepper<'_, B>) {
        let mut waiting = 0;
        for (serial, r) in &self.reqs {
            let running: usize = self
                .works
                .iter()
                .filter(|w| w.subs.contains(serial))
                .filter_map(|w| w.job.and_then(|id| st.progress(id)))
                .map(|(d, _)| d)
                .sum();
            let started = self.works.iter().any(|w| w.job.is_some() && w.subs.contains(serial));
            waiting += usize::from(r.finished == 0 && !started);
            let done = r.finished + running;
            if r.state.done.swap(done, Relaxed) != done {
                let _ = r.events.send((r.tag, Event::Progress));
            }
        }
        self.report.waiting = waiting;
    }
}
