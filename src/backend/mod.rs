//! The backend trait: the fused ops that the U-Net and the DiffStyle loop are written
//! against. `cpu` is the plain f32 oracle; a GPU backend implements the same trait by
//! launching kernels, so every op here is shaped like one kernel launch (fusions in the
//! arguments, all memory addressed as regions of backend buffers, nothing allocated
//! inside an op).
//!
//! Conventions shared by every op:
//! - activations are NCHW f32 regions of a backend buffer ([`Act`]), batch-contiguous;
//! - an input whose batch `n` is smaller than the output's is *broadcast*: output sample
//!   `b` reads input sample `b % n` (this is how two decoders share one set of skips);
//! - outputs never overlap inputs (the memory planner guarantees it).

pub mod check;
pub mod cpu;
pub mod gpu;

use anyhow::Result;

/// A batch of NCHW activations: `n*c*h*w` floats starting at `off` in `buf`.
pub struct Act<'a, B> {
    pub buf: &'a B,
    pub off: usize,
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

// Manual impls: `B` itself need not be Copy (it is only borrowed).
impl<B> Clone for Act<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B> Copy for Act<'_, B> {}

impl<'a, B> Act<'a, B> {
    pub fn new(buf: &'a B, off: usize, n: usize, c: usize, h: usize, w: usize) -> Self {
        Self { buf, off, n, c, h, w }
    }
    /// Elements per sample.
    pub fn sample_len(&self) -> usize {
        self.c * self.h * self.w
    }
    pub fn len(&self) -> usize {
        self.n * self.sample_len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Samples `start..start+n` of this batch.
    pub fn samples(&self, start: usize, n: usize) -> Self {
        assert!(start + n <= self.n, "sample range out of bounds");
        Self { off: self.off + start * self.sample_len(), n, ..*self }
    }
}

/// Channel concatenation of one or two sources (the decoder's `cat([h, skip])`), read
/// in place without materialising it.
pub struct Cat<'a, B> {
    pub a: Act<'a, B>,
    pub b: Option<Act<'a, B>>,
}
impl<B> Clone for Cat<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B> Copy for Cat<'_, B> {}

impl<'a, B> Cat<'a, B> {
    pub fn one(a: Act<'a, B>) -> Self {
        Self { a, b: None }
    }
    pub fn channels(&self) -> usize {
        self.a.c + self.b.map_or(0, |b| b.c)
    }
}

impl<'a, B> From<Act<'a, B>> for Cat<'a, B> {
    fn from(a: Act<'a, B>) -> Self {
        Cat::one(a)
    }
}

/// How a weight tensor will be used, so a backend may store it in its own layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightKind {
    /// `[cout, cin, k, k]`
    Conv,
    /// `[out, in]`
    Linear,
    /// `[c]` (bias, norm scale / shift)
    Vector,
}

/// Fused 2-D convolution:
/// `out = conv(up2?(cat(x)), w, stride, pad) + bias + temb[:, :, None, None] + residual`.
pub struct Conv2d<'a, B: Backend + ?Sized> {
    pub x: Cat<'a, B::Buf>,
    /// `[cout, cin, k, k]` with k = 1 or 3.
    pub w: &'a B::Weight,
    pub bias: &'a B::Weight,
    pub k: usize,
    pub stride: usize,
    /// Zero padding `[top, left, bottom, right]` of the (up-sampled) input.
    pub pad: [usize; 4],
    /// Nearest-neighbour 2x up-sampling of the input, fused into the read.
    pub upsample: bool,
    /// Per-sample, per-output-channel add, shape `(n or 1, cout, 1, 1)`.
    pub temb: Option<Act<'a, B::Buf>>,
    /// Added after everything else, same shape as `out`.
    pub residual: Option<Act<'a, B::Buf>>,
    pub out: Act<'a, B::Buf>,
}

/// One deterministic / stochastic DDIM update:
/// `x0 = (x - eps_x0 * sqrt(1 - a_i)) / sqrt(a_i)`,
/// `out = sqrt(a_j) * x0 + c_dir * eps_dir + c_noise * z`, `z = noise(seed, stream)`
/// (`rng::fill_gaussian(seed, stream, 0, ..)`): the same for every sample of the batch,
/// so that a pair's result does not depend on where it sits in a batch of pairs.
/// The term with `z` is skipped when `c_noise == 0`.
pub struct DdimStep<'a, B> {
    pub x: Act<'a, B>,
    pub eps_x0: Act<'a, B>,
    pub eps_dir: Act<'a, B>,
    pub out: Act<'a, B>,
    pub a_i: f32,
    pub a_j: f32,
    pub c_dir: f32,
    pub c_noise: f32,
    pub seed: u64,
    pub stream: u32,
}

/// Milliseconds of host clock around `f`, between two `sync`s: the timer of backends
/// (and devices) without device events.
pub fn host_timed(sync: &dyn Fn() -> Result<()>, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    sync()?;
    let t = std::time::Instant::now();
    f()?;
    sync()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

pub trait Backend {
    /// Activation / latent storage.
    type Buf;
    /// An uploaded weight tensor.
    type Weight;

    fn name(&self) -> &'static str;

    /// Where ops run, for messages (`cpu`, the GPU's name).
    fn describe(&self) -> String {
        self.name().to_string()
    }

    /// Peak device memory held so far (weights and buffers), for backends with device
    /// memory of their own.
    fn peak_device_bytes(&self) -> Option<usize> {
        None
    }

    /// Brackets one sampler step: a backend may record the ops in between and run them
    /// as one replayable graph at `end_step` (the GPU does; the CPU runs ops at once).
    /// Host copies (`upload`, `download`) inside the bracket are allowed and ordered.
    fn begin_step(&self) -> Result<()> {
        Ok(())
    }
    fn end_step(&self) -> Result<()> {
        Ok(())
    }

    /// Milliseconds the backend spends on the ops `f` issues (device events on a GPU,
    /// the host clock around synchronisations otherwise), for benchmarks.
    fn time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        host_timed(&|| self.sync(), f)
    }

    /// A buffer of `len` f32, filled with NaN so that an op that forgets to write shows.
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    fn upload(&self, dst: Act<'_, Self::Buf>, data: &[f32]) -> Result<()>;
    fn download(&self, src: Act<'_, Self::Buf>) -> Result<Vec<f32>>;
    fn upload_weight(&self, t: &crate::tensor::HostTensor, kind: WeightKind) -> Result<Self::Weight>;
    /// Waits until every op issued so far has finished.
    fn sync(&self) -> Result<()>;

    /// `dst = src` (same shape; `src` may broadcast over the batch).
    fn copy(&self, src: Act<'_, Self::Buf>, dst: Act<'_, Self::Buf>) -> Result<()>;

    /// Sinusoidal timestep embedding (diffusers `get_timestep_embedding`, scale 1,
    /// max period 10000): `out[b] = [sin(t_b f), cos(t_b f)]` (or cos first when `flip`),
    /// `f_k = exp(-ln(10000) * k / (dim/2 - shift))`. `t.len() == out.n`, `out.c == dim`.
    fn timestep_embedding(
        &self,
        t: &[f32],
        flip_sin_to_cos: bool,
        freq_shift: f32,
        out: Act<'_, Self::Buf>,
    ) -> Result<()>;

    /// `out = w @ silu?(x) + b` on `(n, in, 1, 1)` -> `(n, out, 1, 1)`.
    fn linear(
        &self,
        x: Act<'_, Self::Buf>,
        w: &Self::Weight,
        b: &Self::Weight,
        silu_input: bool,
        out: Act<'_, Self::Buf>,
    ) -> Result<()>;

    /// GroupNorm over `cat(x)` (biased variance, affine), then SiLU if `silu`.
    #[allow(clippy::too_many_arguments)]
    fn group_norm(
        &self,
        x: Cat<'_, Self::Buf>,
        gamma: &Self::Weight,
        beta: &Self::Weight,
        groups: usize,
        eps: f32,
        silu: bool,
        out: Act<'_, Self::Buf>,
    ) -> Result<()>;

    /// GroupNorm over `x` with FiLM conditioning (the ADM res block's
    /// `norm(h) * (1 + scale) + shift`), then SiLU if `silu`: `film` is `(n or 1, 2C,
    /// 1, 1)`, scale = channels `[0, C)`, shift = `[C, 2C)`, broadcast over the batch
    /// like every input.
    #[allow(clippy::too_many_arguments)]
    fn group_norm_film(
        &self,
        x: Act<'_, Self::Buf>,
        gamma: &Self::Weight,
        beta: &Self::Weight,
        groups: usize,
        eps: f32,
        film: Act<'_, Self::Buf>,
        silu: bool,
        out: Act<'_, Self::Buf>,
    ) -> Result<()>;

    /// Nearest-neighbour 2x up-sampling (`up`) or 2x2 average pooling with stride 2
    /// (odd sizes drop their last row / column, as `avg_pool2d`). `x` may broadcast.
    fn resample(&self, x: Act<'_, Self::Buf>, up: bool, out: Act<'_, Self::Buf>) -> Result<()>;

    fn conv2d(&self, p: &Conv2d<'_, Self>) -> Result<()>;

    /// Spatial self-attention core. `qkv` is `(n, 3C, h, w)`: q = channels `[0, C)`,
    /// k = `[C, 2C)`, v = `[2C, 3C)`; head `j` uses channels `[j d, (j+1) d)` of each,
    /// `d = C / heads`. `out[n, c, p] = sum_s softmax_s(q_p . k_s / sqrt(d)) v[c, s]`.
    fn attention(&self, qkv: Act<'_, Self::Buf>, heads: usize, out: Act<'_, Self::Buf>) -> Result<()>;

    /// The h-space mix, per sample over all C*H*W elements (method.md):
    /// without a mask, `hc` is rescaled to `||h||` and `out = slerp(gamma, h, hc_n)`;
    /// with a mask `M` (`(1, 1, H, W)`, broadcast over channels and batch),
    /// `out = slerp(gamma, h*M, hc*M) + (1 - M) * h`. Falls back to linear
    /// interpolation when sin(theta) is tiny or a norm is zero; never emits NaN.
    fn hspace_mix(
        &self,
        h: Act<'_, Self::Buf>,
        hc: Act<'_, Self::Buf>,
        gamma: f32,
        mask: Option<Act<'_, Self::Buf>>,
        out: Act<'_, Self::Buf>,
    ) -> Result<()>;

    fn ddim_step(&self, p: &DdimStep<'_, Self::Buf>) -> Result<()>;

    /// DiffStyle calibration (method.md step 5), per sample:
    /// `P = (x - sqrt(1-a) eps) / sqrt(a)`, `P' = (x - sqrt(1-a) eps_mod) / sqrt(a)`,
    /// `P' <- mean(P') + (P' - mean(P')) * std(P - mean P) / std(P' - mean P')`,
    /// `out = x + sqrt(a) (P' - P) + omega sqrt(1-a) (eps_mod - eps)`.
    fn calibrate(
        &self,
        x: Act<'_, Self::Buf>,
        eps: Act<'_, Self::Buf>,
        eps_mod: Act<'_, Self::Buf>,
        a: f32,
        omega: f32,
        out: Act<'_, Self::Buf>,
    ) -> Result<()>;
}
