//! DiffStyle on a backend: DDIM inversion recording the h trajectory, and generation
//! from the style's x_T with the content's h injected (method.md, sections 1 and 2).
//! Written once against `Backend`; the latents never leave the backend inside a loop.

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

use super::rng;
use super::schedule::{seq, Schedule};
use crate::backend::{Act, Backend, DdimStep};
use crate::model::unet::{UNet, Workspace};

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

impl Settings {
    /// Refuses out-of-range knobs before any work is done.
    pub fn validate(&self, sched: &Schedule) -> Result<()> {
        let tmax = sched.len() as i64 - 1;
        ensure!(
            self.gamma.is_finite() && (0.0..=1.0).contains(&self.gamma),
            "--gamma must be in [0, 1], got {}",
            self.gamma
        );
        ensure!(self.inv_steps >= 2, "--inv-steps must be at least 2, got {}", self.inv_steps);
        ensure!(self.gen_steps >= 2, "--gen-steps must be at least 2, got {}", self.gen_steps);
        ensure!(
            self.inv_steps <= sched.len() && self.gen_steps <= sched.len(),
            "--inv-steps and --gen-steps must not exceed the schedule's {} steps",
            sched.len()
        );
        ensure!(
            self.replace_steps <= sched.len(),
            "--replace-steps must be 0 (every step) or at most {}, got {}",
            sched.len(),
            self.replace_steps
        );
        for (name, v) in [("--t-edit", self.t_edit), ("--t-boost", self.t_boost), ("--dt-end", self.dt_end)] {
            ensure!((0..=tmax).contains(&v), "{name} must be in [0, {tmax}], got {v}");
        }
        ensure!(
            self.dt_lambda.is_finite() && self.dt_lambda > 0.0,
            "--dt-lambda must be a positive number, got {}",
            self.dt_lambda
        );
        ensure!(self.omega.is_finite(), "--omega must be finite, got {}", self.omega);
        // The time sequences assume the authors' 1000-step schedule (t_0 = 999).
        ensure!(sched.len() == 1000, "the time sequences need a 1000-step schedule, the model has {}", sched.len());
        Ok(())
    }
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

/// The U-Net plus everything a run needs on the backend, allocated once.
pub struct Engine<'a, B: Backend> {
    pub be: &'a B,
    pub unet: &'a UNet<B>,
    pub sched: &'a Schedule,
    ws: Workspace<B>,
    /// Latent slots: current, next, calibrated; then the mask.
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
        let ws = unet.workspace(be, 1, 2)?;
        let hs = unet.arch.h_size();
        let state = be.alloc(SLOTS * Self::lat_len(unet) + hs * hs)?;
        Ok(Self { be, unet, sched, ws, state, traj: None, counts: Counts::default() })
    }

    fn lat_len(unet: &UNet<B>) -> usize {
        let a = &unet.arch;
        a.in_channels * a.sample_size * a.sample_size
    }

    fn slot(&self, k: usize) -> Act<'_, B::Buf> {
        let a = &self.unet.arch;
        Act::new(&self.state, k * Self::lat_len(self.unet), 1, a.in_channels, a.sample_size, a.sample_size)
    }

    fn mask(&self) -> Act<'_, B::Buf> {
        let hs = self.unet.arch.h_size();
        Act::new(&self.state, SLOTS * Self::lat_len(self.unet), 1, 1, hs, hs)
    }

    fn check_latent(&self, x: &[f32], what: &str) -> Result<()> {
        ensure!(
            x.len() == Self::lat_len(self.unet),
            "{what} has {} values, the model needs {}",
            x.len(),
            Self::lat_len(self.unet)
        );
        Ok(())
    }

    /// U-Net on slot `src` at time t, eps of the encoder batch left in the workspace.
    fn forward(&mut self, src: usize, t: i64) -> Result<()> {
        self.be.copy(self.slot(src), self.unet.x(&self.ws))?;
        self.unet.forward(self.be, &self.ws, &[t as f32])?;
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
        self.be.ddim_step(&DdimStep {
            x: self.slot(src),
            eps_x0,
            eps_dir,
            out: self.slot(dst),
            a_i: self.sched.alpha_bar(i),
            a_j: self.sched.alpha_bar(j),
            c_dir,
            c_noise,
            seed,
            // Noise depends on the step's time only (inversion never draws any).
            stream: i as u32,
        })
    }

    /// DDIM inversion of `x0` over seq(n), recording h at every step's start time.
    pub fn invert(&mut self, x0: &[f32], n: usize, progress: &mut dyn FnMut()) -> Result<Inversion> {
        self.check_latent(x0, "the image")?;
        let times = seq(n);
        self.be.upload(self.slot(0), x0)?;
        // The trajectory is gathered on the backend and read back once at the end, so a
        // step is pure backend work (one graph on a GPU).
        let h1 = self.unet.h(&self.ws, 1);
        let hlen = h1.len();
        let hbuf = self.be.alloc((times.len() - 1) * hlen)?;
        let mut keys = vec![];
        let (mut cur, mut nxt) = (0, 1);
        for (k, w) in times.windows(2).enumerate() {
            let (i, j) = (w[0], w[1]);
            self.be.begin_step()?;
            self.forward(cur, i)?;
            keys.push(i);
            let h = self.unet.h(&self.ws, 1);
            self.be.copy(h, Act::new(&hbuf, k * hlen, 1, h.c, h.h, h.w))?;
            let eps = self.unet.eps(&self.ws, 1);
            let c_dir = (1.0 - self.sched.alpha_bar(j)).sqrt();
            self.step(cur, nxt, eps, eps, i, j, c_dir, 0.0, 0)?;
            self.be.end_step()?;
            std::mem::swap(&mut cur, &mut nxt);
            progress();
        }
        let h = self.be.download(Act::new(&hbuf, 0, 1, keys.len() * hlen, 1, 1))?;
        let x_t = self.be.download(self.slot(cur))?;
        ensure!(x_t.iter().all(|v| v.is_finite()), "inversion produced non-finite values");
        Ok(Inversion { x0: x0.to_vec(), x_t, keys, h })
    }

    /// Plain deterministic DDIM generation from `x_t` over seq(n).
    pub fn ddim(&mut self, x_t: &[f32], n: usize, progress: &mut dyn FnMut()) -> Result<Vec<f32>> {
        self.check_latent(x_t, "the latent")?;
        self.be.upload(self.slot(0), x_t)?;
        let times = seq(n);
        let (mut cur, mut nxt) = (0, 1);
        for k in (0..times.len()).rev() {
            let (i, j) = (times[k], if k == 0 { -1 } else { times[k - 1] });
            self.be.begin_step()?;
            self.forward(cur, i)?;
            let eps = self.unet.eps(&self.ws, 1);
            let c_dir = (1.0 - self.sched.alpha_bar(j)).sqrt();
            self.step(cur, nxt, eps, eps, i, j, c_dir, 0.0, 0)?;
            self.be.end_step()?;
            std::mem::swap(&mut cur, &mut nxt);
            progress();
        }
        self.finish(cur)
    }

    /// Seeded Gaussian x_T for sample `k` (used by `sample`).
    pub fn noise(&self, seed: u64, k: u32) -> Vec<f32> {
        let mut z = vec![0f32; Self::lat_len(self.unet)];
        rng::fill_gaussian(seed, SAMPLE_STREAM, k, &mut z);
        z
    }

    fn finish(&self, slot: usize) -> Result<Vec<f32>> {
        let x = self.be.download(self.slot(slot))?;
        if x.iter().any(|v| !v.is_finite()) {
            bail!("generation produced non-finite values (the model or the settings are unstable)");
        }
        Ok(x)
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
        self.check_latent(style_xt, "the style latent")?;
        let hlen = self.unet.h(&self.ws, 1).len();
        ensure!(
            content.h_len() == hlen && !content.keys.is_empty(),
            "the content's h trajectory does not match the model's h-space"
        );
        self.be.upload(self.slot(0), style_xt)?;
        if let Some(m) = mask {
            ensure!(m.len() == self.mask().len(), "the mask must cover the h grid");
            self.be.upload(self.mask(), m)?;
        }
        // The trajectory lives on the backend for the whole pair.
        let reuse = matches!(&self.traj, Some((_, len)) if *len == content.h.len());
        if !reuse {
            self.traj = Some((self.be.alloc(content.h.len())?, content.h.len()));
        }
        let hs = self.unet.arch.h_size();
        {
            let traj = &self.traj.as_ref().expect("allocated above").0;
            self.be.upload(Act::new(traj, 0, 1, content.h.len(), 1, 1), &content.h)?;
        }

        let times = seq(s.gen_steps);
        let replace = if s.replace_steps == 0 { times.clone() } else { seq(s.replace_steps) };
        let (mut cur, mut nxt) = (0usize, 1usize);
        for k in (0..times.len()).rev() {
            let (i, j) = (times[k], if k == 0 { -1 } else { times[k - 1] });
            let (a_i, a_j) = (self.sched.alpha_bar(i), self.sched.alpha_bar(j));
            let dir = (1.0 - a_j).sqrt();
            self.be.begin_step()?;
            if !replace.contains(&i) {
                self.forward(cur, i)?;
                let eps = self.unet.eps(&self.ws, 1);
                self.step(cur, nxt, eps, eps, i, j, dir, 0.0, 0)?;
                self.be.end_step()?;
                std::mem::swap(&mut cur, &mut nxt);
                progress();
                continue;
            }
            // Injection-capable: one encoder, then one or two decoders on its skips.
            self.be.copy(self.slot(cur), self.unet.x(&self.ws))?;
            self.unet.encode(self.be, &self.ws, &[i as f32])?;
            self.counts.encoder += 1;
            let mixed = i >= s.t_edit;
            if mixed {
                let traj = &self.traj.as_ref().expect("allocated above").0;
                let h2 = self.unet.h(&self.ws, 2);
                let maskv = mask.map(|_| self.mask());
                let hc = Act::new(traj, content.closest(i) * hlen, 1, hlen / (hs * hs), hs, hs);
                self.be.hspace_mix(h2.samples(0, 1), hc, s.gamma, maskv, h2.samples(1, 1))?;
                self.unet.decode(self.be, &self.ws, 2)?;
                self.counts.decoder += 2;
                self.counts.mixed_steps += 1;
            } else {
                self.unet.decode(self.be, &self.ws, 1)?;
                self.counts.decoder += 1;
            }
            let eps_all = self.unet.eps(&self.ws, if mixed { 2 } else { 1 });
            let eps = eps_all.samples(0, 1);
            let eps_mod = if mixed { eps_all.samples(1, 1) } else { eps };
            let noisy = i <= s.t_boost;
            // eta = 1 coefficients, in the authors' f32 order.
            let (c_dir, c_noise) = if noisy {
                let c1 = ((1.0 - a_i / a_j) * (1.0 - a_j) / (1.0 - a_i)).sqrt();
                let c2 = ((1.0 - a_j) - c1 * c1).max(0.0).sqrt();
                (c2, c1)
            } else {
                (dir, 0.0)
            };
            let dt_override = s.omega == 0.0 && s.dt_lambda != 1.0 && i >= s.dt_end;
            self.counts.noisy_steps += usize::from(c_noise != 0.0 && !dt_override);
            if s.omega != 0.0 {
                if mixed {
                    // Calibrate x_i, rerun the plain U-Net there, take an ordinary step.
                    self.be.calibrate(self.slot(cur), eps, eps_mod, a_i, s.omega, self.slot(2))?;
                    self.forward(2, i)?;
                    let eps2 = self.unet.eps(&self.ws, 1);
                    self.step(2, nxt, eps2, eps2, i, j, c_dir, c_noise, s.seed)?;
                } else {
                    // eps' == eps: calibration leaves x_i as it is, and the rerun U-Net
                    // would return eps again; the ordinary step has no dt_lambda.
                    self.step(cur, nxt, eps, eps, i, j, c_dir, c_noise, s.seed)?;
                }
            } else if dt_override {
                // The authors overwrite the (possibly noisy) update here.
                self.step(cur, nxt, eps_mod, eps, i, j, dir * s.dt_lambda, 0.0, s.seed)?;
            } else {
                self.step(cur, nxt, eps_mod, eps, i, j, c_dir, c_noise, s.seed)?;
            }
            self.be.end_step()?;
            std::mem::swap(&mut cur, &mut nxt);
            progress();
        }
        self.finish(cur)
    }
}
