//! DiffStyle on a backend: DDIM inversion recording the h trajectory, and generation
//! from the style's x_T with the content's h injected (method.md, sections 1 and 2).
//! Written once against `Backend`; the latents never leave the backend inside a loop.

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

use super::timesteps::seq;
use crate::backend::{Act, Backend, DdimStep};
use crate::model::schedule::Schedule;
use crate::model::unet::{UNet, Workspace};
use crate::rng;

/// Every knob of method.md, with the authors' in-domain defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Weight of the content in the h-space slerp (authors: `hs_coeff` / `h_gamma`).
    pub gamma: f32,
    /// Mix h only at steps with t >= t_edit (`user_defined_t_edit`).
    pub t_edit: i64,
    /// Inversion steps (`n_inv_step`).
    pub inv_steps: usize,
    /// Generation steps (`n_gen_step`).
    pub gen_steps: usize,
    /// Injection-capable steps are seq(replace_steps); 0 = every step
    /// (`content_replace_step`).
    pub replace_steps: usize,
    /// Stochastic (eta = 1) injection steps at t <= t_boost (`t_noise`).
    pub t_boost: i64,
    /// Scale of the direction term at t >= dt_end (`dt_lambda`).
    pub dt_lambda: f32,
    pub dt_end: i64,
    /// Style calibration strength (`omega`); 0 disables it.
    pub omega: f32,
    /// Seed of the counter-based noise.
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Preset::InDomain.settings()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// The authors' in-domain style mixing (AFHQ, CelebA-HQ).
    InDomain,
    /// The authors' harmonization-like transfer with artistic references.
    Harmonize,
    /// 50 inversion and 50 generation steps: ~20x cheaper, for previews.
    Fast,
}

impl Preset {
    pub fn settings(self) -> Settings {
        let base = Settings {
            gamma: 0.3,
            t_edit: 400,
            inv_steps: 50,
            gen_steps: 1000,
            replace_steps: 50,
            t_boost: 200,
            dt_lambda: 1.0,
            dt_end: 950,
            omega: 0.0,
            seed: 1234,
        };
        match self {
            Preset::InDomain => base,
            Preset::Harmonize => Settings { gamma: 0.4, inv_steps: 1000, gen_steps: 1000, t_boost: 0, ..base },
            Preset::Fast => Settings { gen_steps: 50, ..base },
        }
    }
}

/// A knob out of its range: the knob (its `Settings` field name, which is also its
/// server form field) and what is wrong with its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadKnob {
    pub knob: &'static str,
    pub problem: String,
}

impl BadKnob {
    /// The command-line flag of the knob (`t_edit` -> `--t-edit`).
    pub fn flag(&self) -> String {
        format!("--{}", self.knob.replace('_', "-"))
    }
}

impl std::fmt::Display for BadKnob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.flag(), self.problem)
    }
}

impl std::error::Error for BadKnob {}

impl Settings {
    /// Refuses out-of-range knobs and settings the model cannot run, before any work.
    pub fn validate(&self, sched: &Schedule) -> Result<()> {
        self.check_knobs(sched.len())?;
        check_schedule(sched)
    }

    /// The range of every knob, for a schedule of `steps` steps; names the first
    /// knob out of range.
    pub fn check_knobs(&self, steps: usize) -> std::result::Result<(), BadKnob> {
        let bad = |knob, problem: String| Err(BadKnob { knob, problem });
        let tmax = steps as i64 - 1;
        if !(self.gamma.is_finite() && (0.0..=1.0).contains(&self.gamma)) {
            return bad("gamma", format!("must be in [0, 1], got {}", self.gamma));
        }
        for (knob, v) in [("inv_steps", self.inv_steps), ("gen_steps", self.gen_steps)] {
            if v < 2 {
                return bad(knob, format!("must be at least 2, got {v}"));
            }
            if v > steps {
                return bad(knob, format!("must not exceed the schedule's {steps} steps, got {v}"));
            }
        }
        if self.replace_steps > steps {
            return bad(
                "replace_steps",
                format!("must be 0 (every step) or at most {steps}, got {}", self.replace_steps),
            );
        }
        for (knob, v) in [("t_edit", self.t_edit), ("t_boost", self.t_boost), ("dt_end", self.dt_end)] {
            if !(0..=tmax).contains(&v) {
                return bad(knob, format!("must be in [0, {tmax}], got {v}"));
            }
        }
        if !(self.dt_lambda.is_finite() && self.dt_lambda > 0.0) {
            return bad("dt_lambda", format!("must be a positive number, got {}", self.dt_lambda));
        }
        if !self.omega.is_finite() {
            return bad("omega", format!("must be finite, got {}", self.omega));
        }
        Ok(())
    }
}

/// The time sequences assume the authors' 1000-step schedule (t_0 = 999).
pub fn check_schedule(sched: &Schedule) -> Result<()> {
    ensure!(sched.len() == 1000, "the time sequences need a 1000-step schedule, the model has {}", sched.len());
    Ok(())
}

/// What inverting one image yields.
#[derive(Clone, Debug)]
pub struct Inversion {
    /// The preprocessed image (model space, CHW).
    pub x0: Vec<f32>,
    /// The inverted latent at t = 999.
    pub x_t: Vec<f32>,
    /// Timesteps at which h was recorded, ascending (seq(n)[..n-1]).
    pub keys: Vec<i64>,
    /// h at each key, `keys.len() * h_len` values.
    pub h: Vec<f32>,
}

impl Inversion {
    /// The timesteps at which an inversion of `inv_steps` steps records h: the start
    /// of every step (none at t = 999).
    pub fn keys_for(inv_steps: usize) -> Vec<i64> {
        let mut keys = seq(inv_steps);
        keys.pop();
        keys
    }

    /// An inversion read back (from a cache): its keys must be those an inversion of
    /// `inv_steps` steps records.
    pub fn from_parts(x0: Vec<f32>, x_t: Vec<f32>, h: Vec<f32>, keys: Vec<i64>, inv_steps: usize) -> Result<Self> {
        ensure!(keys == Self::keys_for(inv_steps), "the cache's timesteps do not match --inv-steps {inv_steps}");
        Ok(Self { x0, x_t, keys, h })
    }

    pub fn h_len(&self) -> usize {
        self.h.len() / self.keys.len().max(1)
    }

    /// Index of the key closest to `t`; on a tie the larger key (the authors search the
    /// keys in descending order with `min`).
    pub fn closest(&self, t: i64) -> usize {
        let mut best = 0;
        for (k, &key) in self.keys.iter().enumerate() {
            if (key - t).abs() <= (self.keys[best] - t).abs() {
                best = k;
            }
        }
        best
    }
}

/// Work counters of one generation (for `--verbose` and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub encoder: usize,
    pub decoder: usize,
    pub noisy_steps: usize,
    pub mixed_steps: usize,
}

/// How an injection-capable step updates the latent (method.md, section 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// A DDIM step: `x0` from eps' (eps when unmixed), the direction from eps, with
    /// `c_dir` / `c_noise`. Also the authors' dt_lambda overwrite at t >= dt_end (then
    /// `c_dir` holds the scaled direction and `c_noise` is 0) and every plain step.
    Step,
    /// Style calibration (omega != 0 on a mixed step): calibrate x_i, rerun the plain
    /// U-Net there, take an ordinary step on its eps.
    Calibrate,
}

/// One generation step from time `i` to `j` (`j` = -1 after the last): everything the
/// settings decide about it, in one place for [`Engine`] and any other scheduler of the
/// same steps.
#[derive(Clone, Copy, Debug)]
pub struct GenStep {
    pub i: i64,
    pub j: i64,
    /// Injection-capable: one encoder, then one or two decoders on its skips (else a
    /// plain forward and a deterministic step with seed 0).
    pub inject: bool,
    /// h is mixed with the content's (a second decoder on h').
    pub mixed: bool,
    pub c_dir: f32,
    pub c_noise: f32,
    pub update: Update,
    /// Counted as a noisy step.
    pub noisy: bool,
}

impl GenStep {
    /// `replace` = the injection-capable times (seq(replace_steps), or every time).
    pub fn new(s: &Settings, sched: &Schedule, replace: &[i64], i: i64, j: i64) -> Self {
        let (a_i, a_j) = (sched.alpha_bar(i), sched.alpha_bar(j));
        let dir = (1.0 - a_j).sqrt();
        let plain =
            Self { i, j, inject: false, mixed: false, c_dir: dir, c_noise: 0.0, update: Update::Step, noisy: false };
        if !replace.contains(&i) {
            return plain;
        }
        let mixed = i >= s.t_edit;
        // eta = 1 coefficients, in the authors' f32 order.
        let (c_dir, c_noise) = if i <= s.t_boost {
            let c1 = ((1.0 - a_i / a_j) * (1.0 - a_j) / (1.0 - a_i)).sqrt();
            let c2 = ((1.0 - a_j) - c1 * c1).max(0.0).sqrt();
            (c2, c1)
        } else {
            (dir, 0.0)
        };
        let dt_override = s.omega == 0.0 && s.dt_lambda != 1.0 && i >= s.dt_end;
        let noisy = c_noise != 0.0 && !dt_override;
        // With omega != 0 on an unmixed step eps' == eps: calibration would leave x_i as
        // it is and the rerun U-Net would return eps again, so it is an ordinary step.
        let (update, c_dir, c_noise) = if s.omega != 0.0 && mixed {
            (Update::Calibrate, c_dir, c_noise)
        } else if dt_override {
            (Update::Step, dir * s.dt_lambda, 0.0)
        } else {
            (Update::Step, c_dir, c_noise)
        };
        Self { inject: true, mixed, c_dir, c_noise, update, noisy, ..plain }
    }

    /// The generation's steps in the order they run (from t = 999 down).
    pub fn all(s: &Settings, sched: &Schedule) -> Vec<Self> {
        let times = seq(s.gen_steps);
        let replace = if s.replace_steps == 0 { times.clone() } else { seq(s.replace_steps) };
        (0..times.len())
            .rev()
            .map(|k| Self::new(s, sched, &replace, times[k], if k == 0 { -1 } else { times[k - 1] }))
            .collect()
    }
}

/// One DDIM update on the backend from time `i` to `j`: `[x, out, eps_x0, eps_dir]`
/// (`x0` predicted from `eps_x0`, the direction from `eps_dir`). The step noise depends
/// on the seed and the step's time only, never on the sample or its batch, which is
/// what lets samples be batched in any company (inversion never draws any).
pub(crate) fn ddim_update<B: Backend>(
    be: &B,
    sched: &Schedule,
    [x, out, eps_x0, eps_dir]: [Act<'_, B::Buf>; 4],
    (i, j): (i64, i64),
    c_dir: f32,
    c_noise: f32,
    seed: u64,
) -> Result<()> {
    let (a_i, a_j) = (sched.alpha_bar(i), sched.alpha_bar(j));
    be.ddim_step(&DdimStep { x, eps_x0, eps_dir, out, a_i, a_j, c_dir, c_noise, seed, stream: i as u32 })
}

/// The U-Net plus everything a run needs on the backend, allocated once, for `batch`
/// images (inversions) or pairs (generations) at a time. Fewer inputs than the batch
/// are padded by repeating the last one; every sample computes exactly what it would
/// alone (the step noise does not depend on the sample).
pub struct Engine<'a, B: Backend> {
    pub be: &'a B,
    pub unet: &'a UNet<B>,
    pub sched: &'a Schedule,
    batch: usize,
    /// The timestep of every sample of a step (host side, reused by every step).
    ts: Vec<f32>,
    ws: Workspace<B>,
    /// Latent slots of `batch` latents each: current, next, calibrated; then the mask.
    state: B::Buf,
    /// The content's h trajectory of the current pair.
    traj: Option<(B::Buf, usize)>,
    pub counts: Counts,
}

const SLOTS: usize = 3;

/// The noise stream of `sample`'s initial latent (steps use their timestep).
pub const SAMPLE_STREAM: u32 = u32::MAX;

impl<'a, B: Backend> Engine<'a, B> {
    pub fn new(be: &'a B, unet: &'a UNet<B>, sched: &'a Schedule) -> Result<Self> {
        Self::with_batch(be, unet, sched, 1)
    }

    /// An engine that runs `batch` inversions or pairs side by side (one encoder batch;
    /// the two decoders of an injecting step as one batch of `2 * batch`).
    pub fn with_batch(be: &'a B, unet: &'a UNet<B>, sched: &'a Schedule, batch: usize) -> Result<Self> {
        ensure!(batch >= 1, "the batch must hold at least one pair");
        let ws = unet.workspace(be, batch, 2 * batch)?;
        let hs = unet.arch.h_size();
        let state = be.alloc(SLOTS * batch * Self::lat_len(unet) + hs * hs)?;
        Ok(Self { be, unet, sched, batch, ts: vec![0.0; batch], ws, state, traj: None, counts: Counts::default() })
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    fn lat_len(unet: &UNet<B>) -> usize {
        let a = &unet.arch;
        a.in_channels * a.sample_size * a.sample_size
    }

    fn slot(&self, k: usize) -> Act<'_, B::Buf> {
        let a = &self.unet.arch;
        let len = self.batch * Self::lat_len(self.unet);
        Act::new(&self.state, k * len, self.batch, a.in_channels, a.sample_size, a.sample_size)
    }

    fn mask(&self) -> Act<'_, B::Buf> {
        let hs = self.unet.arch.h_size();
        Act::new(&self.state, SLOTS * self.batch * Self::lat_len(self.unet), 1, 1, hs, hs)
    }

    /// Checks 1..=batch latents and uploads them into `slot`, padding with the last.
    fn upload_batch(&self, slot: usize, xs: &[&[f32]], what: &str) -> Result<()> {
        ensure!(!xs.is_empty() && xs.len() <= self.batch, "{} {what}s for an engine of batch {}", xs.len(), self.batch);
        for x in xs {
            ensure!(
                x.len() == Self::lat_len(self.unet),
                "{what} has {} values, the model needs {}",
                x.len(),
                Self::lat_len(self.unet)
            );
        }
        for k in 0..self.batch {
            self.be.upload(self.slot(slot).samples(k, 1), xs[k.min(xs.len() - 1)])?;
        }
        Ok(())
    }

    /// The first `k` latents of `slot`, each checked to be finite.
    fn download_batch(&self, slot: usize, k: usize, what: &str) -> Result<Vec<Vec<f32>>> {
        let all = self.be.download(self.slot(slot))?;
        let out: Vec<Vec<f32>> = all.chunks(Self::lat_len(self.unet)).take(k).map(<[f32]>::to_vec).collect();
        if out.iter().any(|x| x.iter().any(|v| !v.is_finite())) {
            bail!("{what} produced non-finite values (the model or the settings are unstable)");
        }
        Ok(out)
    }

    /// U-Net on slot `src` at time t, eps of the encoder batch left in the workspace.
    fn forward(&mut self, src: usize, t: i64) -> Result<()> {
        self.be.copy(self.slot(src), self.unet.x(&self.ws))?;
        self.ts.fill(t as f32);
        self.unet.forward(self.be, &self.ws, &self.ts)?;
        self.counts.encoder += 1;
        self.counts.decoder += 1;
        Ok(())
    }

    /// A DDIM update from slot `src` into slot `dst`.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        src: usize,
        dst: usize,
        eps_x0: Act<'_, B::Buf>,
        eps_dir: Act<'_, B::Buf>,
        i: i64,
        j: i64,
        c_dir: f32,
        c_noise: f32,
        seed: u64,
    ) -> Result<()> {
        let (x, out) = (self.slot(src), self.slot(dst));
        ddim_update(self.be, self.sched, [x, out, eps_x0, eps_dir], (i, j), c_dir, c_noise, seed)
    }

    /// DDIM inversion of `x0` over seq(n), recording h at every step's start time.
    pub fn invert(&mut self, x0: &[f32], n: usize, progress: &mut dyn FnMut()) -> Result<Inversion> {
        Ok(self.invert_batch(&[x0], n, progress)?.remove(0))
    }

    /// `invert` of up to `batch` images side by side.
    pub fn invert_batch(&mut self, x0s: &[&[f32]], n: usize, progress: &mut dyn FnMut()) -> Result<Vec<Inversion>> {
        let times = seq(n);
        self.upload_batch(0, x0s, "image")?;
        // The trajectory is gathered on the backend, key-major (the batch's h at a key
        // side by side), and read back once at the end, so a step is pure backend work
        // (one graph on a GPU).
        let hb = self.unet.h(&self.ws, self.batch);
        let hlen = hb.sample_len();
        let (bn, hbl) = (self.batch, hb.len());
        let hbuf = self.be.alloc((times.len() - 1) * hbl)?;
        let mut keys = vec![];
        let (mut cur, mut nxt) = (0, 1);
        for (k, w) in times.windows(2).enumerate() {
            let (i, j) = (w[0], w[1]);
            self.be.begin_step()?;
            self.forward(cur, i)?;
            keys.push(i);
            let h = self.unet.h(&self.ws, bn);
            self.be.copy(h, Act::new(&hbuf, k * hbl, bn, h.c, h.h, h.w))?;
            let eps = self.unet.eps(&self.ws, bn);
            let c_dir = (1.0 - self.sched.alpha_bar(j)).sqrt();
            self.step(cur, nxt, eps, eps, i, j, c_dir, 0.0, 0)?;
            self.be.end_step()?;
            std::mem::swap(&mut cur, &mut nxt);
            progress();
        }
        let h = self.be.download(Act::new(&hbuf, 0, 1, keys.len() * hbl, 1, 1))?;
        let x_ts = self.download_batch(cur, x0s.len(), "inversion")?;
        Ok(x0s
            .iter()
            .zip(x_ts)
            .enumerate()
            .map(|(p, (x0, x_t))| {
                let h =
                    (0..keys.len()).flat_map(|k| &h[(k * bn + p) * hlen..(k * bn + p + 1) * hlen]).copied().collect();
                Inversion { x0: x0.to_vec(), x_t, keys: keys.clone(), h }
            })
            .collect())
    }

    /// Plain deterministic DDIM generation from `x_t` over seq(n).
    pub fn ddim(&mut self, x_t: &[f32], n: usize, progress: &mut dyn FnMut()) -> Result<Vec<f32>> {
        self.upload_batch(0, &[x_t], "the latent")?;
        let bn = self.batch;
        let times = seq(n);
        let (mut cur, mut nxt) = (0, 1);
        for k in (0..times.len()).rev() {
            let (i, j) = (times[k], if k == 0 { -1 } else { times[k - 1] });
            self.be.begin_step()?;
            self.forward(cur, i)?;
            let eps = self.unet.eps(&self.ws, bn);
            let c_dir = (1.0 - self.sched.alpha_bar(j)).sqrt();
            self.step(cur, nxt, eps, eps, i, j, c_dir, 0.0, 0)?;
            self.be.end_step()?;
            std::mem::swap(&mut cur, &mut nxt);
            progress();
        }
        Ok(self.download_batch(cur, 1, "generation")?.remove(0))
    }

    /// Seeded Gaussian x_T for sample `k` (used by `sample`).
    pub fn noise(&self, seed: u64, k: u32) -> Vec<f32> {
        let mut z = vec![0f32; Self::lat_len(self.unet)];
        rng::fill_gaussian(seed, SAMPLE_STREAM, k, &mut z);
        z
    }

    /// DiffStyle generation: from the style's x_T, injecting the content's h.
    /// `mask` (h grid, 1 = content) switches to local mixing.
    pub fn transfer(
        &mut self,
        style_xt: &[f32],
        content: &Inversion,
        s: &Settings,
        mask: Option<&[f32]>,
        progress: &mut dyn FnMut(),
    ) -> Result<Vec<f32>> {
        Ok(self.transfer_batch(&[style_xt], &[content], s, mask, progress)?.remove(0))
    }

    /// `transfer` of up to `batch` pairs side by side (`style_xts[p]` with
    /// `contents[p]`), all with the same settings and mask. The contents must have been
    /// inverted with the same number of steps.
    pub fn transfer_batch(
        &mut self,
        style_xts: &[&[f32]],
        contents: &[&Inversion],
        s: &Settings,
        mask: Option<&[f32]>,
        progress: &mut dyn FnMut(),
    ) -> Result<Vec<Vec<f32>>> {
        ensure!(style_xts.len() == contents.len(), "{} styles for {} contents", style_xts.len(), contents.len());
        self.upload_batch(0, style_xts, "the style latent")?;
        let bn = self.batch;
        let hlen = self.unet.h(&self.ws, 1).len();
        let keys = &contents[0].keys;
        for c in contents {
            ensure!(
                c.h_len() == hlen && !c.keys.is_empty(),
                "the content's h trajectory does not match the model's h-space"
            );
            ensure!(&c.keys == keys, "the contents of one batch must be inverted with the same steps");
        }
        if let Some(m) = mask {
            ensure!(m.len() == self.mask().len(), "the mask must cover the h grid");
            self.be.upload(self.mask(), m)?;
        }
        // The trajectories live on the backend for the whole batch, key-major: the
        // batch's h at one key side by side, padded like the latents.
        let len = keys.len() * bn * hlen;
        let mut host = Vec::with_capacity(len);
        for k in 0..keys.len() {
            for p in 0..bn {
                host.extend_from_slice(&contents[p.min(contents.len() - 1)].h[k * hlen..(k + 1) * hlen]);
            }
        }
        let reuse = matches!(&self.traj, Some((_, l)) if *l == len);
        if !reuse {
            self.traj = Some((self.be.alloc(len)?, len));
        }
        let hs = self.unet.arch.h_size();
        {
            let traj = &self.traj.as_ref().expect("allocated above").0;
            self.be.upload(Act::new(traj, 0, 1, len, 1, 1), &host)?;
        }

        let (mut cur, mut nxt) = (0usize, 1usize);
        for g in GenStep::all(s, self.sched) {
            let (i, j) = (g.i, g.j);
            self.be.begin_step()?;
            if !g.inject {
                self.forward(cur, i)?;
                let eps = self.unet.eps(&self.ws, bn);
                self.step(cur, nxt, eps, eps, i, j, g.c_dir, 0.0, 0)?;
                self.be.end_step()?;
                std::mem::swap(&mut cur, &mut nxt);
                progress();
                continue;
            }
            // Injection-capable: one encoder, then one or two decoders on its skips.
            self.be.copy(self.slot(cur), self.unet.x(&self.ws))?;
            self.ts.fill(i as f32);
            self.unet.encode(self.be, &self.ws, &self.ts)?;
            self.counts.encoder += 1;
            if g.mixed {
                // Decoder samples [bn, 2 bn) get h' and read the skips of sample b % bn.
                let traj = &self.traj.as_ref().expect("allocated above").0;
                let h2 = self.unet.h(&self.ws, 2 * bn);
                let maskv = mask.map(|_| self.mask());
                let key = contents[0].closest(i);
                let hc = Act::new(traj, key * bn * hlen, bn, hlen / (hs * hs), hs, hs);
                self.be.hspace_mix(h2.samples(0, bn), hc, s.gamma, maskv, h2.samples(bn, bn))?;
                self.unet.decode(self.be, &self.ws, 2 * bn)?;
                self.counts.decoder += 2;
                self.counts.mixed_steps += 1;
            } else {
                self.unet.decode(self.be, &self.ws, bn)?;
                self.counts.decoder += 1;
            }
            let eps_all = self.unet.eps(&self.ws, if g.mixed { 2 * bn } else { bn });
            let eps = eps_all.samples(0, bn);
            let eps_mod = if g.mixed { eps_all.samples(bn, bn) } else { eps };
            self.counts.noisy_steps += usize::from(g.noisy);
            if g.update == Update::Calibrate {
                // Calibrate x_i, rerun the plain U-Net there, take an ordinary step.
                self.be.calibrate(self.slot(cur), eps, eps_mod, self.sched.alpha_bar(i), s.omega, self.slot(2))?;
                self.forward(2, i)?;
                let eps2 = self.unet.eps(&self.ws, bn);
                self.step(2, nxt, eps2, eps2, i, j, g.c_dir, g.c_noise, s.seed)?;
            } else {
                self.step(cur, nxt, eps_mod, eps, i, j, g.c_dir, g.c_noise, s.seed)?;
            }
            self.be.end_step()?;
            std::mem::swap(&mut cur, &mut nxt);
            progress();
        }
        self.download_batch(cur, contents.len(), "generation")
    }
}
