//! The U-Net as a list of fused ops over named values, and the checkpoint tensors it
//! reads: built once from a `UNetArch` by the builder of its family (`ddpm.rs`,
//! `adm.rs`; `Graph::build` in `families.rs` picks it), planned into an arena
//! (`plan.rs`), executed by `unet.rs` on any backend.
//!
//! Names once: a builder declares every checkpoint tensor it reads, with its stored
//! name and shape, as it builds the ops that use it (`Builder::tensor`). The loader's
//! expected-tensor list is `Graph::tensors` of the built graph, and the architecture's
//! checks walk the ops (`validate.rs`), so nothing else spells a parameter name.
//!
//! The list is split at the middle block: the encoder ends with `h`, the decoder starts
//! from it.

use super::arch::UNetArch;
use crate::backend::WeightKind;

pub type ValueId = usize;
pub type ParamId = usize;
pub type TensorId = usize;

/// Which batch size a value has: the encoder's (`n_enc`) or the decoder's (up to
/// `n_dec`, the run's decoder batch). Skips and time-embedding projections are
/// encoder-batch values that the decoder reads with broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchClass {
    Enc,
    Dec,
}

#[derive(Clone, Debug)]
pub struct Value {
    pub name: String,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub class: BatchClass,
    /// Kept until the end of the program (inputs, h, eps).
    pub pinned: bool,
}

#[derive(Clone, Debug)]
pub enum Op {
    TimeEmbed {
        out: ValueId,
    },
    Linear {
        x: ValueId,
        w: ParamId,
        b: ParamId,
        silu_input: bool,
        out: ValueId,
    },
    GroupNorm {
        x: (ValueId, Option<ValueId>),
        gamma: ParamId,
        beta: ParamId,
        groups: usize,
        /// FiLM: `(n, 2C, 1, 1)` scale then shift, `y * (1 + scale) + shift` before SiLU.
        film: Option<ValueId>,
        silu: bool,
        out: ValueId,
    },
    /// Nearest 2x up-sampling (`up`) or 2x2 average pooling.
    Resample {
        x: ValueId,
        up: bool,
        out: ValueId,
    },
    Conv {
        x: (ValueId, Option<ValueId>),
        w: ParamId,
        b: ParamId,
        k: usize,
        stride: usize,
        pad: [usize; 4],
        upsample: bool,
        temb: Option<ValueId>,
        residual: Option<ValueId>,
        out: ValueId,
    },
    Attention {
        qkv: ValueId,
        heads: usize,
        out: ValueId,
    },
}

impl Op {
    pub fn inputs(&self) -> Vec<ValueId> {
        match self {
            Op::TimeEmbed { .. } => vec![],
            Op::Linear { x, .. } => vec![*x],
            Op::GroupNorm { x, film, .. } => std::iter::once(x.0).chain(x.1).chain(*film).collect(),
            Op::Resample { x, .. } => vec![*x],
            Op::Conv { x, temb, residual, .. } => {
                std::iter::once(x.0).chain(x.1).chain(*temb).chain(*residual).collect()
            }
            Op::Attention { qkv, .. } => vec![*qkv],
        }
    }

    pub fn output(&self) -> ValueId {
        match self {
            Op::TimeEmbed { out }
            | Op::Linear { out, .. }
            | Op::GroupNorm { out, .. }
            | Op::Conv { out, .. }
            | Op::Resample { out, .. }
            | Op::Attention { out, .. } => *out,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Op::TimeEmbed { .. } => "time_embed",
            Op::Linear { .. } => "linear",
            Op::GroupNorm { .. } => "group_norm",
            Op::Conv { .. } => "conv",
            Op::Attention { .. } => "attention",
            Op::Resample { up: true, .. } => "upsample",
            Op::Resample { up: false, .. } => "avg_pool",
        }
    }
}

/// A checkpoint tensor the graph reads: its canonical stored name and shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredTensor {
    pub name: String,
    pub shape: Vec<usize>,
}

/// How a parameter is assembled from the checkpoint's tensors.
#[derive(Clone, Debug)]
pub enum ParamSource {
    /// One tensor, reshaped.
    Tensor(TensorId),
    /// Several tensors concatenated along dim 0 (fused q/k/v).
    Concat(Vec<TensorId>),
    /// Rows (slices along dim 0) of one tensor, in the order given: a reordering of
    /// fused q/k/v rows, or the first outputs of a layer.
    Rows { tensor: TensorId, rows: Vec<usize> },
}

/// One weight of an op, as the backend receives it.
#[derive(Clone, Debug)]
pub struct Param {
    pub source: ParamSource,
    pub shape: Vec<usize>,
    pub kind: WeightKind,
}

impl Param {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub values: Vec<Value>,
    /// Every checkpoint tensor, in the checkpoint's module order.
    pub tensors: Vec<StoredTensor>,
    pub params: Vec<Param>,
    /// Encoder ops, then decoder ops from `decoder_start` on.
    pub ops: Vec<Op>,
    pub decoder_start: usize,
    pub x: ValueId,
    pub h: ValueId,
    pub eps: ValueId,
    pub skips: Vec<ValueId>,
}

/// What a convolution does besides convolving: kernel, stride, padding (top, left,
/// bottom, right), a fused nearest 2x up-sampling of its input, and the fused
/// time-embedding and residual additions.
#[derive(Clone, Copy, Debug)]
pub(super) struct ConvOpts {
    pub k: usize,
    pub stride: usize,
    pub pad: [usize; 4],
    pub upsample: bool,
    pub temb: Option<ValueId>,
    pub residual: Option<ValueId>,
}

impl ConvOpts {
    /// 3x3, stride 1, padding 1.
    pub fn k3() -> Self {
        Self { k: 3, stride: 1, pad: [1; 4], upsample: false, temb: None, residual: None }
    }
    /// 1x1, stride 1, no padding.
    pub fn k1() -> Self {
        Self { k: 1, pad: [0; 4], ..Self::k3() }
    }
    /// 3x3, stride 2, with the given padding.
    pub fn down(pad: [usize; 4]) -> Self {
        Self { stride: 2, pad, ..Self::k3() }
    }
    pub fn upsample(self, upsample: bool) -> Self {
        Self { upsample, ..self }
    }
    pub fn temb(self, temb: Option<ValueId>) -> Self {
        Self { temb, ..self }
    }
    pub fn residual(self, residual: ValueId) -> Self {
        Self { residual: Some(residual), ..self }
    }
}

/// The weight and bias of a conv or linear layer, or the scale and shift of a norm.
pub(super) type Pair = (ParamId, ParamId);

/// A res block's layer names in one family's checkpoint.
pub(super) struct ResNames {
    pub norm1: &'static str,
    pub conv1: &'static str,
    /// The time-embedding projection (a linear layer) ...
    pub temb: &'static str,
    /// ... and the name of its output value.
    pub temb_out: &'static str,
    pub norm2: &'static str,
    pub conv2: &'static str,
    /// The 1x1 conv of the skip path when the channels change.
    pub shortcut: &'static str,
}

/// How a res block resamples (the ADM family's up / down blocks).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Resample {
    None,
    Up,
    Down,
}

/// Builds a graph: the helpers both families share.
pub(super) struct Builder<'a> {
    pub arch: &'a UNetArch,
    pub g: Graph,
    /// The time embedding every res block projects.
    pub temb: ValueId,
}

impl<'a> Builder<'a> {
    /// An empty graph with the input `x` (encoder batch, pinned).
    pub fn new(arch: &'a UNetArch) -> Self {
        let mut b = Self { arch, g: Graph::default(), temb: 0 };
        let s = arch.sample_size;
        let x = b.value("x".into(), arch.in_channels, s, s, BatchClass::Enc);
        b.g.values[x].pinned = true;
        b.g.x = x;
        b
    }

    pub fn value(&mut self, name: String, c: usize, h: usize, w: usize, class: BatchClass) -> ValueId {
        self.g.values.push(Value { name, c, h, w, class, pinned: false });
        self.g.values.len() - 1
    }

    pub fn like(&mut self, name: String, c: usize, of: ValueId) -> ValueId {
        let v = &self.g.values[of];
        let (h, w, class) = (v.h, v.w, v.class);
        self.value(name, c, h, w, class)
    }

    /// Declares a checkpoint tensor: the one place its name and shape are written.
    pub fn tensor(&mut self, name: String, shape: Vec<usize>) -> TensorId {
        debug_assert!(!self.g.tensors.iter().any(|t| t.name == name), "tensor {name} declared twice");
        self.g.tensors.push(StoredTensor { name, shape });
        self.g.tensors.len() - 1
    }

    pub fn param(&mut self, source: ParamSource, shape: Vec<usize>, kind: WeightKind) -> ParamId {
        self.g.params.push(Param { source, shape, kind });
        self.g.params.len() - 1
    }

    /// A parameter that is one stored tensor of shape `stored`, used as `shape`.
    pub fn stored(&mut self, name: String, stored: Vec<usize>, shape: Vec<usize>, kind: WeightKind) -> ParamId {
        let t = self.tensor(name, stored);
        self.param(ParamSource::Tensor(t), shape, kind)
    }

    /// `{prefix}.weight` and `{prefix}.bias` of a conv layer `[cout, cin, k, k]`.
    pub fn conv_params(&mut self, prefix: &str, cout: usize, cin: usize, k: usize) -> Pair {
        let shape = vec![cout, cin, k, k];
        let w = self.stored(format!("{prefix}.weight"), shape.clone(), shape, WeightKind::Conv);
        (w, self.vector(format!("{prefix}.bias"), cout))
    }

    /// `{prefix}.weight` and `{prefix}.bias` of a linear layer `[o, i]`.
    pub fn linear_params(&mut self, prefix: &str, o: usize, i: usize) -> Pair {
        let w = self.stored(format!("{prefix}.weight"), vec![o, i], vec![o, i], WeightKind::Linear);
        (w, self.vector(format!("{prefix}.bias"), o))
    }

    /// Scale and shift of a norm over `c` channels.
    pub fn norm_params(&mut self, prefix: &str, c: usize) -> Pair {
        (self.vector(format!("{prefix}.weight"), c), self.vector(format!("{prefix}.bias"), c))
    }

    pub fn vector(&mut self, name: String, c: usize) -> ParamId {
        self.stored(name, vec![c], vec![c], WeightKind::Vector)
    }

    pub fn chans(&self, x: (ValueId, Option<ValueId>)) -> usize {
        self.g.values[x.0].c + x.1.map_or(0, |b| self.g.values[b].c)
    }

    /// The time embedding: sinusoids of `width` -> linear -> SiLU -> linear
    /// (`time_embed_dim` wide), under the family's two linear layer names. Every res
    /// block reads it, decoder included, so it stays pinned.
    pub fn time_embedding(&mut self, width: usize, linear_1: &str, linear_2: &str) {
        let t = self.arch.time_embed_dim;
        let ts = self.value("time_proj".into(), width, 1, 1, BatchClass::Enc);
        self.g.ops.push(Op::TimeEmbed { out: ts });
        let l1 = self.linear_params(linear_1, t, width);
        let t1 = self.value(format!("{linear_1}.out"), t, 1, 1, BatchClass::Enc);
        self.linear(ts, l1, false, t1);
        let l2 = self.linear_params(linear_2, t, t);
        let temb = self.value("temb".into(), t, 1, 1, BatchClass::Enc);
        self.linear(t1, l2, true, temb);
        self.g.values[temb].pinned = true;
        self.temb = temb;
    }

    pub fn linear(&mut self, x: ValueId, (w, b): Pair, silu_input: bool, out: ValueId) {
        self.g.ops.push(Op::Linear { x, w, b, silu_input, out });
    }

    /// The projection of silu(temb) that a res block adds (or applies as FiLM): an
    /// encoder-batch value that the decoder reads with broadcast.
    pub fn temb_projection(&mut self, prefix: &str, l: Pair, width: usize) -> ValueId {
        let tp = self.value(format!("{prefix}.out"), width, 1, 1, BatchClass::Enc);
        self.linear(self.temb, l, true, tp);
        tp
    }

    /// A group norm with declared parameters; `film` applies `(1 + scale, shift)`.
    pub fn group_norm_with(
        &mut self,
        prefix: &str,
        x: (ValueId, Option<ValueId>),
        (gamma, beta): Pair,
        groups: usize,
        film: Option<ValueId>,
        silu: bool,
    ) -> ValueId {
        let c = self.chans(x);
        let out = self.like(format!("{prefix}.out"), c, x.0);
        self.g.ops.push(Op::GroupNorm { x, gamma, beta, groups, film, silu, out });
        out
    }

    /// A group norm that declares its parameters.
    pub fn group_norm(&mut self, prefix: &str, x: (ValueId, Option<ValueId>), groups: usize, silu: bool) -> ValueId {
        let p = self.norm_params(prefix, self.chans(x));
        self.group_norm_with(prefix, x, p, groups, None, silu)
    }

    /// A convolution that declares its parameters.
    pub fn conv(&mut self, prefix: &str, x: (ValueId, Option<ValueId>), cout: usize, o: ConvOpts) -> ValueId {
        let p = self.conv_params(prefix, cout, self.chans(x), o.k);
        self.conv_with(prefix, x, p, cout, o)
    }

    /// A convolution with declared parameters; its output is `{prefix}.out`.
    pub fn conv_with(
        &mut self,
        prefix: &str,
        x: (ValueId, Option<ValueId>),
        p: Pair,
        cout: usize,
        o: ConvOpts,
    ) -> ValueId {
        self.conv_named(format!("{prefix}.out"), x, p, cout, o)
    }

    /// A convolution with declared parameters into a value named `out_name`.
    pub fn conv_named(
        &mut self,
        out_name: String,
        x: (ValueId, Option<ValueId>),
        (w, b): Pair,
        cout: usize,
        o: ConvOpts,
    ) -> ValueId {
        let src = &self.g.values[x.0];
        let (hin, win) = if o.upsample { (src.h * 2, src.w * 2) } else { (src.h, src.w) };
        let ho = (hin + o.pad[0] + o.pad[2] - o.k) / o.stride + 1;
        let wo = (win + o.pad[1] + o.pad[3] - o.k) / o.stride + 1;
        let class = src.class;
        let out = self.value(out_name, cout, ho, wo, class);
        let ConvOpts { k, stride, pad, upsample, temb, residual } = o;
        self.g.ops.push(Op::Conv { x, w, b, k, stride, pad, upsample, temb, residual, out });
        out
    }

    /// A res block (both families): norm1 + SiLU, [resampling of h and of the skip
    /// path], conv1, the time-embedding projection (added after conv1, or with `film`
    /// applied as scale and shift in norm2), norm2 + SiLU, conv2 + the skip (a 1x1 conv
    /// when the channels change).
    pub fn res_block(
        &mut self,
        prefix: &str,
        n: &ResNames,
        x: (ValueId, Option<ValueId>),
        cout: usize,
        film: bool,
        rs: Resample,
    ) -> ValueId {
        let groups = self.arch.norm_num_groups;
        let t = self.arch.time_embed_dim;
        let cin = self.chans(x);
        // FiLM projects to scale and shift, 2 x cout.
        let width = if film { 2 * cout } else { cout };
        let name = |layer: &str| format!("{prefix}.{layer}");
        // The block's tensors, in the checkpoint's order.
        let norm1 = self.norm_params(&name(n.norm1), cin);
        let conv1 = self.conv_params(&name(n.conv1), cout, cin, 3);
        let proj = self.linear_params(&name(n.temb), width, t);
        let norm2 = self.norm_params(&name(n.norm2), cout);
        let conv2 = self.conv_params(&name(n.conv2), cout, cout, 3);
        let shortcut = (cin != cout).then(|| self.conv_params(&name(n.shortcut), cout, cin, 1));

        let n1 = self.group_norm_with(&name(n.norm1), x, norm1, groups, None, true);
        let tp = self.temb_projection(&name(n.temb_out), proj, width);
        let add = ConvOpts::k3().temb((!film).then_some(tp));
        let (h1, xs) = match rs {
            Resample::None => (self.conv_with(&name(n.conv1), (n1, None), conv1, cout, add), x),
            Resample::Up => {
                assert!(x.1.is_none(), "a resampling res block has one input");
                let h = self.conv_with(&name(n.conv1), (n1, None), conv1, cout, add.upsample(true));
                (h, (self.resample(name("x_upd"), x.0, true), None))
            }
            Resample::Down => {
                assert!(x.1.is_none(), "a resampling res block has one input");
                let p = self.resample(name("h_upd"), n1, false);
                let h = self.conv_with(&name(n.conv1), (p, None), conv1, cout, add);
                (h, (self.resample(name("x_upd"), x.0, false), None))
            }
        };
        let n2 = self.group_norm_with(&name(n.norm2), (h1, None), norm2, groups, film.then_some(tp), true);
        let skip = match shortcut {
            Some(p) => self.conv_with(&name(n.shortcut), xs, p, cout, ConvOpts::k1()),
            None => {
                assert!(xs.1.is_none(), "a concatenated input always changes the channel count");
                xs.0
            }
        };
        self.conv_with(&name(n.conv2), (n2, None), conv2, cout, ConvOpts::k3().residual(skip))
    }

    /// Nearest 2x up-sampling (`up`) or 2x2 average pooling of `x`.
    pub fn resample(&mut self, name: String, x: ValueId, up: bool) -> ValueId {
        let v = &self.g.values[x];
        let (c, h, w, class) = (v.c, v.h, v.w, v.class);
        let (h, w) = if up { (2 * h, 2 * w) } else { (h / 2, w / 2) };
        let out = self.value(name, c, h, w, class);
        self.g.ops.push(Op::Resample { x, up, out });
        out
    }

    /// Multi-head attention over `qkv` (q, k, v as three blocks of C channels) into a
    /// value like `x`.
    pub fn attend(&mut self, prefix: &str, qkv: ValueId, heads: usize, x: ValueId) -> ValueId {
        let c = self.g.values[x].c;
        let out = self.like(format!("{prefix}.attn"), c, x);
        self.g.ops.push(Op::Attention { qkv, heads, out });
        out
    }

    /// Ends the encoder at `h`: sized for the decoder batch (the encoder fills the
    /// first n_enc samples, the mix writes the others) and kept to the end; `skips`
    /// are what the decoder reads.
    pub fn mark_h(&mut self, h: ValueId, skips: &[ValueId]) {
        let v = &mut self.g.values[h];
        v.class = BatchClass::Dec;
        v.pinned = true;
        v.name = "h".into();
        self.g.h = h;
        self.g.skips = skips.to_vec();
        self.g.decoder_start = self.g.ops.len();
    }

    /// Ends the graph at the noise prediction, kept to the end.
    pub fn finish(mut self, eps: ValueId) -> Graph {
        let v = &mut self.g.values[eps];
        v.pinned = true;
        v.name = "eps".into();
        self.g.eps = eps;
        self.g
    }
}

impl Graph {
    /// The checkpoint's tensors as (name, shape): what a loader expects to find.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        self.tensors.iter().map(|t| (t.name.clone(), t.shape.clone())).collect()
    }

    /// The stored name of a parameter's (first) tensor.
    pub fn param_name(&self, p: ParamId) -> &str {
        let t = match &self.params[p].source {
            ParamSource::Tensor(t) | ParamSource::Rows { tensor: t, .. } => *t,
            ParamSource::Concat(ts) => ts[0],
        };
        &self.tensors[t].name
    }

    /// Floating-point operations of op `i` for one sample (multiply-add = 2).
    /// Sizes are multiplied in f64: `info` reports absurd architectures too, whose
    /// element counts overflow usize.
    pub fn op_flops(&self, i: usize) -> f64 {
        let v = |id: ValueId| &self.values[id];
        let numel = |o: &Value| o.c as f64 * o.h as f64 * o.w as f64;
        match &self.ops[i] {
            Op::Conv { w, out, .. } => {
                let k: usize = self.params[*w].shape()[1..].iter().product();
                2.0 * numel(v(*out)) * k as f64
            }
            Op::Linear { w, .. } => 2.0 * self.params[*w].numel() as f64,
            Op::Attention { out, .. } => {
                let o = v(*out);
                let tokens = o.h as f64 * o.w as f64;
                4.0 * tokens * tokens * o.c as f64
            }
            Op::GroupNorm { out, .. } => 8.0 * numel(v(*out)),
            Op::Resample { out, .. } => 4.0 * numel(v(*out)),
            Op::TimeEmbed { out } => 4.0 * v(*out).c as f64,
        }
    }

    /// (encoder, decoder) FLOPs for one sample.
    pub fn flops(&self) -> (f64, f64) {
        let enc = (0..self.decoder_start).map(|i| self.op_flops(i)).sum();
        let dec = (self.decoder_start..self.ops.len()).map(|i| self.op_flops(i)).sum();
        (enc, dec)
    }

    /// Activation elements one sample's forward reads and writes when every op reads
    /// each of its inputs once and writes its output once (the traffic of our fused
    /// ops; weights not included).
    pub fn activation_traffic(&self) -> f64 {
        let numel = |id: ValueId| {
            let o = &self.values[id];
            o.c as f64 * o.h as f64 * o.w as f64
        };
        self.ops.iter().map(|op| op.inputs().into_iter().map(numel).sum::<f64>() + numel(op.output())).sum()
    }
}
