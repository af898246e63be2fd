//! The training noise schedule of a model (betas, alpha_bar): part of the model's
//! description, read with its config. The sampler's time sequence is
//! `diffusion::timesteps`.
//!
//! Everything here reproduces the reference arithmetic bit for bit:
//! * betas are computed in f64 exactly as numpy / Python compute them;
//! * `alpha_bar` is `cumprod(1 - beta)` in f32, sequentially, after casting the betas
//!   to f32 (the authors: `torch.from_numpy(betas).float()`, `(1.0 - b).cumprod(0)`);

use anyhow::{bail, Result};

/// The training noise schedule as the sampler sees it: `alphas_cumprod[t]` for
/// `t in 0..len()`, plus `alpha_bar(-1) = 1`.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub alphas_cumprod: Vec<f32>,
}

impl Schedule {
    /// `alphas_cumprod` from betas: each beta is cast to f32, `alpha = 1 - beta` in f32,
    /// and the cumulative product is taken sequentially in f32.
    pub fn from_betas(betas: &[f64]) -> Self {
        let mut acc = 1.0f32;
        let alphas_cumprod = betas
            .iter()
            .map(|&b| {
                let alpha = 1.0f32 - b as f32;
                acc *= alpha;
                acc
            })
            .collect();
        Self { alphas_cumprod }
    }

    /// The DDPM schedule of the paper's models (see [`default_betas`]); also the
    /// schedule of a model whose files carry none.
    pub fn ddpm_linear() -> Self {
        Self::from_betas(&default_betas())
    }

    /// alpha_bar(t); `t = -1` gives 1. Panics for any other `t` outside `0..len()`.
    pub fn alpha_bar(&self, t: i64) -> f32 {
        if t == -1 {
            return 1.0;
        }
        assert!(
            t >= 0 && (t as usize) < self.alphas_cumprod.len(),
            "alpha_bar: t = {t} outside -1..{}",
            self.alphas_cumprod.len()
        );
        self.alphas_cumprod[t as usize]
    }

    /// Number of training timesteps.
    pub fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }

    pub fn is_empty(&self) -> bool {
        self.alphas_cumprod.is_empty()
    }
}

/// Betas a schedule can be made of: at least one, each finite and in [0, 1).
pub fn validate_betas(betas: &[f64]) -> Result<()> {
    if betas.is_empty() {
        bail!("the schedule has no timesteps");
    }
    if let Some((i, b)) = betas.iter().enumerate().find(|(_, b)| !(b.is_finite() && **b >= 0.0 && **b < 1.0)) {
        bail!("beta[{i}] = {b} is outside [0, 1)");
    }
    Ok(())
}

/// numpy `linspace(start, end, n, dtype=float64)`, bit-exact: `k * step + start` with
/// `step = (end - start) / (n - 1)`, the last element set to `end`.
pub fn numpy_linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 0 {
        return Vec::new();
    }
    let delta = end - start;
    if n == 1 {
        // numpy: step undefined, y = arange(1) * delta + start
        return vec![0.0 * delta + start];
    }
    let div = (n - 1) as f64;
    let step = delta / div;
    let mut y: Vec<f64> = if step == 0.0 {
        // numpy's denormal special case: y / div * delta
        (0..n).map(|k| k as f64 / div * delta + start).collect()
    } else {
        (0..n).map(|k| k as f64 * step + start).collect()
    };
    y[n - 1] = end;
    y
}

/// The DDPM linear schedule of the paper's models, which is also every format's default
/// (diffusers' schedulers, guided-diffusion's flags): betas 1e-4 .. 0.02 over 1000 steps.
pub const DDPM_BETA_START: f64 = 1e-4;
pub const DDPM_BETA_END: f64 = 0.02;
pub const DDPM_STEPS: usize = 1000;

/// The betas of the DDPM models the paper uses, computed as the authors do (float64
/// linspace).
pub fn default_betas() -> Vec<f64> {
    linear_betas(DDPM_BETA_START, DDPM_BETA_END, DDPM_STEPS)
}

/// The DDPM / authors' linear schedule: `numpy.linspace(start, end, n)` in f64.
pub fn linear_betas(start: f64, end: f64, n: usize) -> Vec<f64> {
    numpy_linspace(start, end, n)
}

/// diffusers' `scaled_linear`: `linspace(sqrt(start), sqrt(end), n) ** 2`, in f64.
pub fn scaled_linear_betas(start: f64, end: f64, n: usize) -> Vec<f64> {
    numpy_linspace(start.sqrt(), end.sqrt(), n).into_iter().map(|x| x * x).collect()
}

/// diffusers' `squaredcos_cap_v2` (`betas_for_alpha_bar`, cosine, max_beta 0.999), in
/// f64 exactly as the Python code evaluates it.
pub fn squaredcos_cap_v2_betas(n: usize) -> Vec<f64> {
    fn alpha_bar(t: f64) -> f64 {
        let c = ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos();
        c * c
    }
    let max_beta = 0.999f64;
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_cases() {
        assert_eq!(linear_betas(0.5, 0.5, 3), vec![0.5, 0.5, 0.5]);
        let s = Schedule::from_betas(&[0.5, 0.5]);
        assert_eq!(s.alpha_bar(-1), 1.0);
        assert_eq!(s.alpha_bar(1), 0.25);
        assert_eq!(s.len(), 2);
    }
}
