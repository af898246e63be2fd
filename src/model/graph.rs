//! The U-Net as a list of fused ops over named values: built once from a `UNetArch`,
//! planned into an arena (`plan.rs`), executed by `unet.rs` on any backend.
//!
//! The list mirrors diffusers' `UNet2DModel.forward` (and the original DDPM `Model`),
//! split at the middle block: the encoder ends with `h`, the decoder starts from it.

use super::arch::UNetArch;

pub type ValueId = usize;
pub type ParamId = usize;

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

/// How a parameter is assembled from the checkpoint's canonical tensors.
#[derive(Clone, Debug)]
pub enum ParamSource {
    /// One tensor, reshaped to `shape`.
    Tensor { name: String, shape: Vec<usize> },
    /// Several tensors concatenated along dim 0 (fused q/k/v), reshaped to `shape`.
    Concat { names: Vec<String>, shape: Vec<usize> },
    /// Rows (slices along dim 0) of one tensor, in the order given, reshaped to
    /// `shape`: a reordering of fused q/k/v rows, or the first outputs of a layer.
    Rows { name: String, rows: Vec<usize>, shape: Vec<usize> },
}

#[derive(Clone, Debug)]
pub struct Param {
    pub source: ParamSource,
    pub kind: crate::backend::WeightKind,
}

impl Param {
    pub fn shape(&self) -> &[usize] {
        match &self.source {
            ParamSource::Tensor { shape, .. } | ParamSource::Concat { shape, .. } | ParamSource::Rows { shape, .. } => {
                shape
            }
        }
    }
    pub fn numel(&self) -> usize {
        self.shape().iter().product()
    }
}

#[derive(Clone, Debug)]
pub struct Graph {
    pub values: Vec<Value>,
    pub params: Vec<Param>,
    /// Encoder ops, then decoder ops from `decoder_start` on.
    pub ops: Vec<Op>,
    pub decoder_start: usize,
    pub x: ValueId,
    pub h: ValueId,
    pub eps: ValueId,
    pub skips: Vec<ValueId>,
}

pub(super) struct Builder<'a> {
    pub(super) arch: &'a UNetArch,
    pub(super) g: Graph,
    pub(super) temb: ValueId,
}

impl Builder<'_> {
    pub(super) fn value(&mut self, name: String, c: usize, h: usize, w: usize, class: BatchClass) -> ValueId {
        self.g.values.push(Value { name, c, h, w, class, pinned: false });
        self.g.values.len() - 1
    }

    pub(super) fn like(&mut self, name: String, c: usize, of: ValueId) -> ValueId {
        let v = &self.g.values[of];
        let (h, w, class) = (v.h, v.w, v.class);
        self.value(name, c, h, w, class)
    }

    pub(super) fn param(&mut self, name: &str, shape: Vec<usize>, kind: crate::backend::WeightKind) -> ParamId {
        let source = ParamSource::Tensor { name: name.to_string(), shape };
        self.g.params.push(Param { source, kind });
        self.g.params.len() - 1
    }

    pub(super) fn vector(&mut self, name: &str, c: usize) -> ParamId {
        self.param(name, vec![c], crate::backend::WeightKind::Vector)
    }

    pub(super) fn conv_params(&mut self, prefix: &str, cout: usize, cin: usize, k: usize) -> (ParamId, ParamId) {
        let w = self.param(&format!("{prefix}.weight"), vec![cout, cin, k, k], crate::backend::WeightKind::Conv);
        (w, self.vector(&format!("{prefix}.bias"), cout))
    }

    pub(super) fn chans(&self, x: (ValueId, Option<ValueId>)) -> usize {
        self.g.values[x.0].c + x.1.map_or(0, |b| self.g.values[b].c)
    }

    pub(super) fn group_norm(
        &mut self,
        prefix: &str,
        x: (ValueId, Option<ValueId>),
        groups: usize,
        silu: bool,
    ) -> ValueId {
        let c = self.chans(x);
        let gamma = self.vector(&format!("{prefix}.weight"), c);
        let beta = self.vector(&format!("{prefix}.bias"), c);
        let out = self.like(format!("{prefix}.out"), c, x.0);
        self.g.ops.push(Op::GroupNorm { x, gamma, beta, groups, film: None, silu, out });
        out
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv(
        &mut self,
        prefix: &str,
        x: (ValueId, Option<ValueId>),
        cout: usize,
        k: usize,
        stride: usize,
        pad: [usize; 4],
        upsample: bool,
        temb: Option<ValueId>,
        residual: Option<ValueId>,
    ) -> ValueId {
        let cin = self.chans(x);
        let (w, b) = self.conv_params(prefix, cout, cin, k);
        self.conv_with(prefix, x, (w, b), cout, k, stride, pad, upsample, temb, residual)
    }

    /// A convolution with parameters registered by the caller.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv_with(
        &mut self,
        prefix: &str,
        x: (ValueId, Option<ValueId>),
        (w, b): (ParamId, ParamId),
        cout: usize,
        k: usize,
        stride: usize,
        pad: [usize; 4],
        upsample: bool,
        temb: Option<ValueId>,
        residual: Option<ValueId>,
    ) -> ValueId {
        let src = &self.g.values[x.0];
        let (hin, win) = if upsample { (src.h * 2, src.w * 2) } else { (src.h, src.w) };
        let ho = (hin + pad[0] + pad[2] - k) / stride + 1;
        let wo = (win + pad[1] + pad[3] - k) / stride + 1;
        let class = src.class;
        let out = self.value(format!("{prefix}.out"), cout, ho, wo, class);
        self.g.ops.push(Op::Conv { x, w, b, k, stride, pad, upsample, temb, residual, out });
        out
    }

    fn resnet(&mut self, prefix: &str, x: (ValueId, Option<ValueId>), cout: usize) -> ValueId {
        let groups = self.arch.norm_num_groups;
        let cin = self.chans(x);
        let n1 = self.group_norm(&format!("{prefix}.norm1"), x, groups, true);
        // The projection of silu(temb) for this block (encoder batch, broadcast).
        let t = self.arch.time_embed_dim;
        let w =
            self.param(&format!("{prefix}.time_emb_proj.weight"), vec![cout, t], crate::backend::WeightKind::Linear);
        let b = self.vector(&format!("{prefix}.time_emb_proj.bias"), cout);
        let tp = self.value(format!("{prefix}.time_emb_proj.out"), cout, 1, 1, BatchClass::Enc);
        self.g.ops.push(Op::Linear { x: self.temb, w, b, silu_input: true, out: tp });
        let c1 = self.conv(&format!("{prefix}.conv1"), (n1, None), cout, 3, 1, [1; 4], false, Some(tp), None);
        let n2 = self.group_norm(&format!("{prefix}.norm2"), (c1, None), groups, true);
        let shortcut = if cin != cout {
            self.conv(&format!("{prefix}.conv_shortcut"), x, cout, 1, 1, [0; 4], false, None, None)
        } else {
            assert!(x.1.is_none(), "a concatenated input always changes the channel count");
            x.0
        };
        self.conv(&format!("{prefix}.conv2"), (n2, None), cout, 3, 1, [1; 4], false, None, Some(shortcut))
    }

    fn attention(&mut self, prefix: &str, x: ValueId, groups: usize) -> ValueId {
        let c = self.g.values[x].c;
        let n = self.group_norm(&format!("{prefix}.group_norm"), (x, None), groups, false);
        let names = |s: &str| ["to_q", "to_k", "to_v"].map(|p| format!("{prefix}.{p}.{s}")).to_vec();
        self.g.params.push(Param {
            source: ParamSource::Concat { names: names("weight"), shape: vec![3 * c, c, 1, 1] },
            kind: crate::backend::WeightKind::Conv,
        });
        let wqkv = self.g.params.len() - 1;
        self.g.params.push(Param {
            source: ParamSource::Concat { names: names("bias"), shape: vec![3 * c] },
            kind: crate::backend::WeightKind::Vector,
        });
        let bqkv = self.g.params.len() - 1;
        let qkv = self.like(format!("{prefix}.qkv"), 3 * c, x);
        self.g.ops.push(Op::Conv {
            x: (n, None),
            w: wqkv,
            b: bqkv,
            k: 1,
            stride: 1,
            pad: [0; 4],
            upsample: false,
            temb: None,
            residual: None,
            out: qkv,
        });
        let a = self.like(format!("{prefix}.attn"), c, x);
        let heads = self.arch.heads(c, false);
        self.g.ops.push(Op::Attention { qkv, heads, out: a });
        let w = self.param(&format!("{prefix}.to_out.0.weight"), vec![c, c, 1, 1], crate::backend::WeightKind::Conv);
        let b = self.vector(&format!("{prefix}.to_out.0.bias"), c);
        let out = self.like(format!("{prefix}.out"), c, x);
        self.g.ops.push(Op::Conv {
            x: (a, None),
            w,
            b,
            k: 1,
            stride: 1,
            pad: [0; 4],
            upsample: false,
            temb: None,
            residual: Some(x),
            out,
        });
        out
    }
}

impl Graph {
    pub fn build(arch: &UNetArch) -> Graph {
        if arch.adm.is_some() {
            return super::adm::build(arch);
        }
        use crate::backend::WeightKind;
        let g =
            Graph { values: vec![], params: vec![], ops: vec![], decoder_start: 0, x: 0, h: 0, eps: 0, skips: vec![] };
        let mut b = Builder { arch, g, temb: 0 };
        let s = arch.sample_size;
        let c0 = arch.block_out_channels[0];
        let t = arch.time_embed_dim;

        let x = b.value("x".into(), arch.in_channels, s, s, BatchClass::Enc);
        b.g.values[x].pinned = true;
        b.g.x = x;

        // Time embedding: sinusoid -> linear -> silu -> linear.
        let ts = b.value("time_proj".into(), c0, 1, 1, BatchClass::Enc);
        b.g.ops.push(Op::TimeEmbed { out: ts });
        let w1 = b.param("time_embedding.linear_1.weight", vec![t, c0], WeightKind::Linear);
        let b1 = b.vector("time_embedding.linear_1.bias", t);
        let t1 = b.value("time_embedding.linear_1.out".into(), t, 1, 1, BatchClass::Enc);
        b.g.ops.push(Op::Linear { x: ts, w: w1, b: b1, silu_input: false, out: t1 });
        let w2 = b.param("time_embedding.linear_2.weight", vec![t, t], WeightKind::Linear);
        let b2 = b.vector("time_embedding.linear_2.bias", t);
        let temb = b.value("temb".into(), t, 1, 1, BatchClass::Enc);
        b.g.ops.push(Op::Linear { x: t1, w: w2, b: b2, silu_input: true, out: temb });
        // Read by every res block, decoder included.
        b.g.values[temb].pinned = true;
        b.temb = temb;

        let mut cur = b.conv("conv_in", (x, None), c0, 3, 1, [1; 4], false, None, None);
        let mut skips = vec![cur];
        let levels = arch.levels();
        for (i, &cout) in arch.block_out_channels.iter().enumerate() {
            for j in 0..arch.layers_per_block {
                let p = format!("down_blocks.{i}.resnets.{j}");
                cur = b.resnet(&p, (cur, None), cout);
                if arch.down_attention[i] {
                    cur = b.attention(&format!("down_blocks.{i}.attentions.{j}"), cur, arch.norm_num_groups);
                }
                skips.push(cur);
            }
            if i + 1 < levels {
                let pad = if arch.downsample_padding == 0 { [0, 0, 1, 1] } else { [1; 4] };
                let p = format!("down_blocks.{i}.downsamplers.0.conv");
                cur = b.conv(&p, (cur, None), cout, 3, 2, pad, false, None, None);
                skips.push(cur);
            }
        }
        let ch = arch.h_channels();
        cur = b.resnet("mid_block.resnets.0", (cur, None), ch);
        if arch.mid_attention {
            cur = b.attention("mid_block.attentions.0", cur, arch.mid_attn_norm_groups);
        }
        cur = b.resnet("mid_block.resnets.1", (cur, None), ch);
        // h is sized for the decoder batch: the encoder fills the first n_enc samples,
        // the mix writes the others.
        b.g.values[cur].class = BatchClass::Dec;
        b.g.values[cur].pinned = true;
        b.g.values[cur].name = "h".into();
        b.g.h = cur;
        b.g.skips = skips.clone();
        b.g.decoder_start = b.g.ops.len();

        let rev: Vec<usize> = arch.block_out_channels.iter().rev().copied().collect();
        for (u, &cout) in rev.iter().enumerate() {
            for j in 0..=arch.layers_per_block {
                let skip = skips.pop().expect("one skip per decoder res block");
                let p = format!("up_blocks.{u}.resnets.{j}");
                cur = b.resnet(&p, (cur, Some(skip)), cout);
                if arch.up_attention[u] {
                    cur = b.attention(&format!("up_blocks.{u}.attentions.{j}"), cur, arch.norm_num_groups);
                }
            }
            if u + 1 < levels {
                let p = format!("up_blocks.{u}.upsamplers.0.conv");
                cur = b.conv(&p, (cur, None), cout, 3, 1, [1; 4], true, None, None);
            }
        }
        let n = b.group_norm("conv_norm_out", (cur, None), arch.norm_num_groups, true);
        let eps = b.conv("conv_out", (n, None), arch.out_channels, 3, 1, [1; 4], false, None, None);
        b.g.values[eps].pinned = true;
        b.g.values[eps].name = "eps".into();
        b.g.eps = eps;
        debug_assert!(skips.is_empty());
        b.g
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
