//! Step-granularity scheduling (issue 25): a [`Stepper`] advances a changing set of
//! jobs (inversions and transfers, each with its own knobs, mask and progress) by one
//! step per [`Stepper::step`], with one U-Net encoder batch shared by all of them. Jobs
//! join between steps ([`Stepper::admit`]) and leave when done or cancelled
//! ([`Stepper::cancel`]); every job's result is bit-identical to what [`Engine`] gives
//! for it alone, because each sample's arithmetic does not depend on its batch (the
//! timestep embedding, the h mix and the DDIM step are per sample, and the step noise
//! depends on the seed and the step's time only).
//!
//! One step: every job's current latent goes into the encoder batch, the mixed
//! transfers first; the decoder runs on that batch plus one h' sample per mixed
//! transfer (decoder sample `n + k` reads the skips of encoder sample `k`); each job
//! then takes its own DDIM step. Transfers that calibrate (omega != 0 on a mixed step)
//! need a second full forward on their calibrated latents, run as one more batch.
//!
//! [`Engine`]: super::method::Engine

use std::sync::Arc;

use anyhow::{bail, ensure, Result};

use super::method::{ddim_update, Counts, GenStep, Inversion, Settings, Update};
use super::timesteps::seq;
use crate::backend::{Act, Backend};
use crate::model::schedule::Schedule;
use crate::model::unet::{UNet, Workspace};

/// What a job computes.
#[derive(Clone, Debug)]
pub enum Task {
    /// DDIM inversion of `x0` (model space) by `steps` steps.
    Invert { x0: Arc<[f32]>, steps: usize },
    /// DiffStyle generation from the style's inverted latent with the content's h.
    Transfer { style_xt: Arc<[f32]>, content: Arc<Inversion>, settings: Settings, mask: Option<Arc<[f32]>> },
}

/// What a finished job yields.
#[derive(Debug)]
pub enum Finished {
    Inverted(Inversion),
    Generated(Vec<f32>),
}

/// A job, from [`Stepper::admit`]: its lane and the admission's serial number, so that
/// an id kept after its job ended never names the next job in that lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JobId(usize, u64);

enum Plan {
    Invert { times: Vec<i64>, x0: Arc<[f32]> },
    Transfer { steps: Vec<GenStep>, content: Arc<Inversion>, settings: Settings },
}

struct Job<B: Backend> {
    serial: u64,
    plan: Plan,
    /// Steps done.
    done: usize,
    /// Which of the lane's two latent slots holds the current latent.
    cur: usize,
    /// Inversion: the h recorded so far; transfer: the content's h (keys x h_len).
    traj: B::Buf,
    /// The transfer's mask on the h grid.
    mask: Option<B::Buf>,
    /// Left out of the steps until released ([`Stepper::hold`]).
    held: bool,
}

impl<B: Backend> Job<B> {
    fn len(&self) -> usize {
        match &self.plan {
            Plan::Invert { times, .. } => times.len() - 1,
            Plan::Transfer { steps, .. } => steps.len(),
        }
    }
}

/// Latent slots per lane: current, next, calibrated.
const SLOTS: usize = 3;

/// The step scheduler's engine: up to `lanes` jobs at a time. See the module docs.
pub struct Stepper<'a, B: Backend> {
    be: &'a B,
    unet: &'a UNet<B>,
    sched: &'a Schedule,
    lanes: usize,
    ws: Workspace<B>,
    /// `lanes x SLOTS` latents.
    state: B::Buf,
    jobs: Vec<Option<Job<B>>>,
    /// Admissions so far (the next job's serial).
    admitted: u64,
    pub counts: Counts,
}

impl<'a, B: Backend> Stepper<'a, B> {
    /// A stepper for up to `lanes` jobs at once (the encoder batch; the decoder batch
    /// is up to twice that).
    pub fn new(be: &'a B, unet: &'a UNet<B>, sched: &'a Schedule, lanes: usize) -> Result<Self> {
        ensure!(lanes >= 1, "the stepper must hold at least one job");
        let ws = unet.workspace(be, lanes, 2 * lanes)?;
        let state = be.alloc(lanes * SLOTS * Self::lat_len(unet))?;
        let jobs = (0..lanes).map(|_| None).collect();
        Ok(Self { be, unet, sched, lanes, ws, state, jobs, admitted: 0, counts: Counts::default() })
    }

    fn lat_len(unet: &UNet<B>) -> usize {
        let a = &unet.arch;
        a.in_channels * a.sample_size * a.sample_size
    }

    fn h_len(&self) -> usize {
        self.unet.h(&self.ws, 1).len()
    }

    /// Latent slot `k` of lane `lane`.
    fn slot(&self, lane: usize, k: usize) -> Act<'_, B::Buf> {
        let a = &self.unet.arch;
        let len = Self::lat_len(self.unet);
        Act::new(&self.state, (lane * SLOTS + k) * len, 1, a.in_channels, a.sample_size, a.sample_size)
    }

    /// The most jobs at once.
    pub fn lanes(&self) -> usize {
        self.lanes
    }

    /// Jobs running now.
    pub fn active(&self) -> usize {
        self.jobs.iter().flatten().count()
    }

    /// Steps done and steps in all, of job `id`.
    pub fn progress(&self, id: JobId) -> Option<(usize, usize)> {
        self.job(id).map(|j| (j.done, j.len()))
    }

    fn job(&self, id: JobId) -> Option<&Job<B>> {
        self.jobs.get(id.0)?.as_ref().filter(|j| j.serial == id.1)
    }

    /// Adds a job (it takes its first step at the next [`Stepper::step`]); `None` when
    /// every lane is busy. Inputs are checked here, before any work.
    pub fn admit(&mut self, task: Task) -> Result<Option<JobId>> {
        let Some(lane) = self.jobs.iter().position(Option::is_none) else { return Ok(None) };
        let lat = Self::lat_len(self.unet);
        let hlen = self.h_len();
        let hs = self.unet.arch.h_size();
        let job = match task {
            Task::Invert { x0, steps } => {
                ensure!(x0.len() == lat, "the image has {} values, the model needs {lat}", x0.len());
                ensure!(steps >= 2, "an inversion needs at least 2 steps, got {steps}");
                let times = seq(steps);
                self.be.upload(self.slot(lane, 0), &x0)?;
                let traj = self.be.alloc((times.len() - 1) * hlen)?;
                Job {
                    serial: self.admitted,
                    plan: Plan::Invert { times, x0 },
                    done: 0,
                    cur: 0,
                    traj,
                    mask: None,
                    held: false,
                }
            }
            Task::Transfer { style_xt, content, settings, mask } => {
                settings.validate(self.sched)?;
                ensure!(style_xt.len() == lat, "the style latent has {} values, the model needs {lat}", style_xt.len());
                ensure!(
                    content.h_len() == hlen && !content.keys.is_empty(),
                    "the content's h trajectory does not match the model's h-space"
                );
                self.be.upload(self.slot(lane, 0), &style_xt)?;
                let traj = self.be.alloc(content.h.len())?;
                self.be.upload(Act::new(&traj, 0, 1, content.h.len(), 1, 1), &content.h)?;
                let mask = match &mask {
                    Some(m) => {
                        ensure!(m.len() == hs * hs, "the mask must cover the {hs}x{hs} h grid");
                        let buf = self.be.alloc(m.len())?;
                        self.be.upload(Act::new(&buf, 0, 1, 1, hs, hs), m)?;
                        Some(buf)
                    }
                    None => None,
                };
                let steps = GenStep::all(&settings, self.sched);
                let plan = Plan::Transfer { steps, content, settings };
                Job { serial: self.admitted, plan, done: 0, cur: 0, traj, mask, held: false }
            }
        };
        self.jobs[lane] = Some(job);
        self.admitted += 1;
        Ok(Some(JobId(lane, self.admitted - 1)))
    }

    /// Removes job `id` (its lane is free for the next [`Stepper::admit`]); the other
    /// jobs go on as if it had never run. False when there is no such job.
    pub fn cancel(&mut self, id: JobId) -> bool {
        self.job(id).is_some() && self.jobs[id.0].take().is_some()
    }

    /// Holds job `id` out of the next steps (`true`) or lets it take part again; a held
    /// job keeps its lane and its state, and its result does not change (each step's
    /// arithmetic and noise depend on the job alone). False when there is no such job.
    pub fn hold(&mut self, id: JobId, held: bool) -> bool {
        match self.jobs.get_mut(id.0).and_then(Option::as_mut).filter(|j| j.serial == id.1) {
            Some(j) => {
                j.held = held;
                true
            }
            None => false,
        }
    }

    /// Whether job `id` is held out of the steps.
    pub fn is_held(&self, id: JobId) -> bool {
        self.job(id).is_some_and(|j| j.held)
    }

    /// Jobs that the next step advances (active and not held).
    pub fn stepping(&self) -> usize {
        self.jobs.iter().flatten().filter(|j| !j.held).count()
    }

    /// The time of job `lane`'s next step and, for a transfer, the step.
    fn next(&self, lane: usize) -> (i64, Option<GenStep>) {
        let j = self.jobs[lane].as_ref().expect("an active lane");
        match &j.plan {
            Plan::Invert { times, .. } => (times[j.done], None),
            Plan::Transfer { steps, .. } => (steps[j.done].i, Some(steps[j.done])),
        }
    }

    /// Copies lane latents into the encoder input (`order[p]`'s slot `slot` at position
    /// p) and runs the encoder at their times: a batch of as many samples as `order`
    /// has (no padding: a lone job costs a batch of one).
    fn encode(&mut self, order: &[(usize, usize)]) -> Result<()> {
        let x = self.unet.x(&self.ws);
        let mut ts = Vec::with_capacity(order.len());
        for (p, &(lane, slot)) in order.iter().enumerate() {
            self.be.copy(self.slot(lane, slot), x.samples(p, 1))?;
            ts.push(self.next(lane).0 as f32);
        }
        self.unet.encode(self.be, &self.ws, &ts)?;
        self.counts.encoder += 1;
        Ok(())
    }

    /// One step of every job not held; returns the jobs that finished with it (their
    /// lanes are free again). `tick` is called once per job and step.
    pub fn step(&mut self, tick: &mut dyn FnMut(JobId)) -> Result<Vec<(JobId, Result<Finished>)>> {
        let active: Vec<usize> = (0..self.lanes).filter(|&l| self.jobs[l].as_ref().is_some_and(|j| !j.held)).collect();
        if active.is_empty() {
            return Ok(vec![]);
        }
        let mixed: Vec<usize> = active.iter().copied().filter(|&l| self.next(l).1.is_some_and(|g| g.mixed)).collect();
        let mut order: Vec<(usize, usize)> = mixed.iter().map(|&l| (l, self.cur(l))).collect();
        order.extend(active.iter().filter(|l| !mixed.contains(l)).map(|&l| (l, self.cur(l))));
        let (n, m) = (order.len(), mixed.len());
        self.be.begin_step()?;
        self.encode(&order)?;
        let h = self.unet.h(&self.ws, n + m);
        let hlen = self.h_len();
        let hs = self.unet.arch.h_size();
        for (k, &lane) in mixed.iter().enumerate() {
            let (t, _) = self.next(lane);
            let job = self.jobs[lane].as_ref().expect("active");
            let Plan::Transfer { content, settings, .. } = &job.plan else { bail!("a mixed inversion") };
            let key = content.closest(t);
            let hc = Act::new(&job.traj, key * hlen, 1, hlen / (hs * hs), hs, hs);
            let mask = job.mask.as_ref().map(|b| Act::new(b, 0, 1, 1, hs, hs));
            self.be.hspace_mix(h.samples(k, 1), hc, settings.gamma, mask, h.samples(n + k, 1))?;
        }
        self.unet.decode(self.be, &self.ws, n + m)?;
        // Counted as Engine counts a batch: passes, and steps that mixed or drew noise.
        self.counts.decoder += 1 + usize::from(m > 0);
        self.counts.mixed_steps += usize::from(m > 0);
        self.counts.noisy_steps += usize::from(order.iter().any(|&(l, _)| self.next(l).1.is_some_and(|g| g.noisy)));
        let eps = self.unet.eps(&self.ws, n + m);
        // Every job's update but the calibrating ones, which need a second forward.
        let mut calibrating = vec![];
        for (p, &(lane, cur)) in order.iter().enumerate() {
            let (t, g) = self.next(lane);
            let e = eps.samples(p, 1);
            match g {
                None => {
                    // Inversion: record h at the step's start, step towards t_{k+1}.
                    let job = self.jobs[lane].as_ref().expect("active");
                    let Plan::Invert { times, .. } = &job.plan else { bail!("an inversion without times") };
                    let j = times[job.done + 1];
                    let hk = h.samples(p, 1);
                    self.be.copy(hk, Act::new(&job.traj, job.done * hlen, 1, hk.c, hk.h, hk.w))?;
                    let c_dir = (1.0 - self.sched.alpha_bar(j)).sqrt();
                    self.ddim(lane, cur, [e, e], (t, j), (c_dir, 0.0), 0)?;
                }
                Some(g) => {
                    let e_mod = if p < m { eps.samples(n + p, 1) } else { e };
                    let seed = self.settings(lane).map_or(0, |s| s.seed);
                    if !g.inject {
                        self.ddim(lane, cur, [e, e], (g.i, g.j), (g.c_dir, 0.0), 0)?;
                    } else if g.update == Update::Calibrate {
                        let omega = self.settings(lane).map_or(0.0, |s| s.omega);
                        let a_i = self.sched.alpha_bar(g.i);
                        self.be.calibrate(self.slot(lane, cur), e, e_mod, a_i, omega, self.slot(lane, 2))?;
                        calibrating.push((lane, 2));
                    } else {
                        self.ddim(lane, cur, [e_mod, e], (g.i, g.j), (g.c_dir, g.c_noise), seed)?;
                    }
                }
            }
        }
        if !calibrating.is_empty() {
            // The plain U-Net at the calibrated latents, then an ordinary step there.
            self.encode(&calibrating)?;
            self.unet.decode(self.be, &self.ws, calibrating.len())?;
            self.counts.decoder += 1;
            let eps2 = self.unet.eps(&self.ws, calibrating.len());
            for (p, &(lane, _)) in calibrating.iter().enumerate() {
                let g = self.next(lane).1.expect("a transfer");
                let seed = self.settings(lane).map_or(0, |s| s.seed);
                let e2 = eps2.samples(p, 1);
                self.ddim(lane, 2, [e2, e2], (g.i, g.j), (g.c_dir, g.c_noise), seed)?;
            }
        }
        self.be.end_step()?;
        let mut finished = vec![];
        for &lane in &active {
            let job = self.jobs[lane].as_mut().expect("active");
            job.done += 1;
            job.cur = 1 - job.cur;
            let id = JobId(lane, job.serial);
            tick(id);
            if job.done == job.len() {
                let job = self.jobs[lane].take().expect("active");
                finished.push((id, self.finish(lane, job)));
            }
        }
        Ok(finished)
    }

    fn cur(&self, lane: usize) -> usize {
        self.jobs[lane].as_ref().map_or(0, |j| j.cur)
    }

    fn settings(&self, lane: usize) -> Option<&Settings> {
        match &self.jobs[lane].as_ref()?.plan {
            Plan::Transfer { settings, .. } => Some(settings),
            Plan::Invert { .. } => None,
        }
    }

    /// A DDIM update of lane `lane` from its slot `src` into the slot that is not current.
    fn ddim(
        &self,
        lane: usize,
        src: usize,
        eps: [Act<'_, B::Buf>; 2],
        g: (i64, i64),
        c: (f32, f32),
        seed: u64,
    ) -> Result<()> {
        let (x, out) = (self.slot(lane, src), self.slot(lane, 1 - self.cur(lane)));
        ddim_update(self.be, self.sched, [x, out, eps[0], eps[1]], g, c.0, c.1, seed)
    }

    fn finish(&self, lane: usize, job: Job<B>) -> Result<Finished> {
        let x = self.be.download(self.slot(lane, job.cur))?;
        let what = if matches!(job.plan, Plan::Invert { .. }) { "inversion" } else { "generation" };
        if x.iter().any(|v| !v.is_finite()) {
            bail!("{what} produced non-finite values (the model or the settings are unstable)");
        }
        Ok(match job.plan {
            Plan::Invert { times, x0 } => {
                let keys = times[..times.len() - 1].to_vec();
                let n = keys.len() * self.h_len();
                let h = self.be.download(Act::new(&job.traj, 0, 1, n, 1, 1))?;
                Finished::Inverted(Inversion { x0: x0.to_vec(), x_t: x, keys, h })
            }
            Plan::Transfer { .. } => Finished::Generated(x),
        })
    }
}
