//! The U-Net on a backend: weights uploaded once, `encode(x, t) -> (h, skips)` and
//! `decode(h, skips, t) -> eps` executed from the op list over a planned arena.

use anyhow::{Context, Result};

use super::arch::UNetArch;
use super::graph::{BatchClass, Graph, Op, ParamSource, TensorId, ValueId};
use super::plan::Plan;
use super::weights::LoadedModel;
use crate::backend::{Act, Backend, Cat, Conv2d};
use crate::dtype::Precision;
use crate::tensor::HostTensor;

pub struct UNet<B: Backend> {
    pub arch: UNetArch,
    pub graph: Graph,
    weights: Vec<B::Weight>,
}

/// The arena of one (encoder batch, decoder batch) plan.
pub struct Workspace<B: Backend> {
    pub plan: Plan,
    arena: B::Buf,
    /// Samples the last `encode` ran (at most the plan's `n_enc`): the skips' batch.
    encoded: std::cell::Cell<usize>,
}

impl<B: Backend> Workspace<B> {
    fn act(&self, g: &Graph, v: ValueId, n: usize) -> Act<'_, B::Buf> {
        let val = &g.values[v];
        Act::new(&self.arena, self.plan.offsets[v], n, val.c, val.h, val.w)
    }
}

/// Assembles parameter `p` of `g` from the checkpoint's tensors.
fn gather(model: &LoadedModel, g: &Graph, p: usize) -> Result<HostTensor> {
    let get = |t: TensorId| {
        let name = &g.tensors[t].name;
        model.tensors.get(name).with_context(|| format!("{}: the checkpoint has no tensor `{name}`", model.source))
    };
    let param = &g.params[p];
    let data = match &param.source {
        ParamSource::Tensor(t) => get(*t)?.data.clone(),
        ParamSource::Rows { tensor, rows } => {
            let t = get(*tensor)?;
            let name = &g.tensors[*tensor].name;
            let total = t.shape.first().copied().unwrap_or(0);
            anyhow::ensure!(total > 0, "{}: tensor `{name}` is empty", model.source);
            let row = t.data.len() / total;
            let mut data = Vec::with_capacity(rows.len() * row);
            for &r in rows {
                anyhow::ensure!(r < total, "{}: tensor `{name}` has no row {r}", model.source);
                data.extend_from_slice(&t.data[r * row..(r + 1) * row]);
            }
            data
        }
        ParamSource::Concat(ts) => {
            let mut data = vec![];
            for &t in ts {
                data.extend_from_slice(&get(t)?.data);
            }
            data
        }
    };
    anyhow::ensure!(
        data.len() == param.numel(),
        "{}: tensor sizes do not match the architecture ({})",
        model.source,
        g.param_name(p)
    );
    Ok(HostTensor::new(param.shape.clone(), data))
}

impl<B: Backend> UNet<B> {
    pub fn new(be: &B, model: &LoadedModel, precision: Precision) -> Result<Self> {
        let graph = Graph::build(&model.arch);
        let mut weights = Vec::with_capacity(graph.params.len());
        for (i, p) in graph.params.iter().enumerate() {
            let mut t = gather(model, &graph, i)?;
            if precision != Precision::F32 {
                t.data.iter_mut().for_each(|v| *v = precision.round(*v));
            }
            weights.push(be.upload_weight(&t, p.kind)?);
        }
        Ok(Self { arch: model.arch.clone(), graph, weights })
    }

    /// Plans and allocates the arena for `n_enc` encoder samples and up to `n_dec`
    /// decoder samples (2 x n_enc when the two decoders of an injecting step run as
    /// one batch).
    pub fn workspace(&self, be: &B, n_enc: usize, n_dec: usize) -> Result<Workspace<B>> {
        let plan = Plan::new(&self.graph, n_enc, n_dec)?;
        let arena = be.alloc(plan.arena_len).with_context(|| {
            format!("cannot allocate the {:.1} MiB activation arena", plan.arena_len as f64 * 4.0 / 1048576.0)
        })?;
        Ok(Workspace { encoded: std::cell::Cell::new(plan.n_enc), plan, arena })
    }

    /// The encoder input `x`: `(n_enc, in, S, S)`.
    pub fn x<'a>(&self, ws: &'a Workspace<B>) -> Act<'a, B::Buf> {
        ws.act(&self.graph, self.graph.x, ws.plan.n_enc)
    }

    /// h for `n` decoder samples; the encoder writes the first `n_enc`.
    pub fn h<'a>(&self, ws: &'a Workspace<B>, n: usize) -> Act<'a, B::Buf> {
        ws.act(&self.graph, self.graph.h, n)
    }

    /// The decoder output for `n` samples.
    pub fn eps<'a>(&self, ws: &'a Workspace<B>, n: usize) -> Act<'a, B::Buf> {
        ws.act(&self.graph, self.graph.eps, n)
    }

    /// Runs the encoder on the first `t.len()` samples of `x` (already in place; at
    /// most `n_enc`) at timesteps `t`. A smaller batch than the plan's is not padded:
    /// the step scheduler runs as many samples as it has jobs.
    pub fn encode(&self, be: &B, ws: &Workspace<B>, t: &[f32]) -> Result<()> {
        let n = t.len();
        anyhow::ensure!(n >= 1 && n <= ws.plan.n_enc, "{n} timesteps for an encoder batch of {}", ws.plan.n_enc);
        ws.encoded.set(n);
        self.run(be, ws, 0..self.graph.decoder_start, n, t)
    }

    /// Runs the decoder on the first `n` samples of h (n <= n_dec), reading the skips
    /// of the last `encode` with broadcast (decoder sample `b` reads encoder sample
    /// `b % encoded`).
    pub fn decode(&self, be: &B, ws: &Workspace<B>, n: usize) -> Result<()> {
        anyhow::ensure!(n >= 1 && n <= ws.plan.n_dec, "decoder batch {n} exceeds the plan");
        self.run(be, ws, self.graph.decoder_start..self.graph.ops.len(), n, &[])
    }

    /// Full forward: encode then decode the encoder batch.
    pub fn forward(&self, be: &B, ws: &Workspace<B>, t: &[f32]) -> Result<()> {
        self.encode(be, ws, t)?;
        self.decode(be, ws, t.len())
    }

    fn run(&self, be: &B, ws: &Workspace<B>, ops: std::ops::Range<usize>, n_run: usize, t: &[f32]) -> Result<()> {
        let g = &self.graph;
        let n_enc = ws.encoded.get();
        let act = |v: ValueId| {
            let n = match g.values[v].class {
                BatchClass::Enc => n_enc,
                BatchClass::Dec => n_run,
            };
            ws.act(g, v, n)
        };
        let cat = |x: (ValueId, Option<ValueId>)| Cat { a: act(x.0), b: x.1.map(act) };
        let w = |p: usize| &self.weights[p];
        for k in ops {
            match &g.ops[k] {
                Op::TimeEmbed { out } => {
                    be.timestep_embedding(t, self.arch.flip_sin_to_cos, self.arch.freq_shift, act(*out))?
                }
                Op::Linear { x, w: pw, b, silu_input, out } => {
                    be.linear(act(*x), w(*pw), w(*b), *silu_input, act(*out))?
                }
                Op::GroupNorm { x, gamma, beta, groups, film: None, silu, out } => {
                    be.group_norm(cat(*x), w(*gamma), w(*beta), *groups, self.arch.norm_eps, *silu, act(*out))?
                }
                Op::GroupNorm { x, gamma, beta, groups, film: Some(f), silu, out } => {
                    anyhow::ensure!(x.1.is_none(), "a FiLM group norm has one input");
                    let eps = self.arch.norm_eps;
                    be.group_norm_film(act(x.0), w(*gamma), w(*beta), *groups, eps, act(*f), *silu, act(*out))?
                }
                Op::Resample { x, up, out } => be.resample(act(*x), *up, act(*out))?,
                Op::Conv { x, w: pw, b, k, stride, pad, upsample, temb, residual, out } => be.conv2d(&Conv2d {
                    x: cat(*x),
                    w: w(*pw),
                    bias: w(*b),
                    k: *k,
                    stride: *stride,
                    pad: *pad,
                    upsample: *upsample,
                    temb: temb.map(act),
                    residual: residual.map(act),
                    out: act(*out),
                })?,
                Op::Attention { qkv, heads, out } => be.attention(act(*qkv), *heads, act(*out))?,
            }
        }
        Ok(())
    }

    /// Parameters (weights and biases) in the model.
    pub fn param_count(&self) -> usize {
        self.graph.params.iter().map(|p| p.numel()).sum()
    }
}
