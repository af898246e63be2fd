//! The ADM family (guided-diffusion / improved-diffusion `UNetModel`): its tensor list
//! under its own names, and its op list.
//!
//! Structure (the module tree of `UNetModel`, whose names are the canonical ones):
//! `time_embed.{0,2}` (linear, SiLU, linear on the sinusoids of width model_channels);
//! `input_blocks.0.0` (conv in); per level `num_res_blocks` x (`ResBlock` [+
//! `AttentionBlock`]) then, but for the last level, a `Downsample` (`.0.op`, a stride-2
//! conv) or a down-sampling `ResBlock`; `middle_block.{0,1,2}` = ResBlock, attention,
//! ResBlock (its output is h); per level from the lowest resolution `num_res_blocks + 1`
//! x (`ResBlock` on cat(h, skip) [+ attention]) and, but for level 0, an `Upsample`
//! (`.conv`) or an up-sampling `ResBlock` after the last one; `out.{0,2}` (norm, SiLU,
//! conv).
//!
//! `ResBlock`: `in_layers.{0,2}` (norm + SiLU, conv 3x3; with up / down the resampling
//! sits between them and is applied to the skip path too), `emb_layers.1` (linear on
//! silu(emb), 2C wide with the FiLM norm), `out_layers.{0,3}` (norm [FiLM] + SiLU, conv),
//! `skip_connection` (1x1 conv when the channels change). `AttentionBlock`: `norm`,
//! `qkv` (conv1d C -> 3C), `proj_out` (conv1d), residual.

use super::arch::UNetArch;
use super::graph::{BatchClass, Builder, Graph, Op, Param, ParamSource, ValueId};
use crate::backend::WeightKind;

/// Every tensor of the ADM `UNetModel` for `arch`, with its stored shape (attention
/// projections are conv1d weights `[o, i, 1]`), in model order.
pub fn expected_tensors(arch: &UNetArch) -> Vec<(String, Vec<usize>)> {
    type List = Vec<(String, Vec<usize>)>;
    fn wb(out: &mut List, p: &str, w: Vec<usize>) {
        let o = w[0];
        out.push((format!("{p}.weight"), w));
        out.push((format!("{p}.bias"), vec![o]));
    }
    fn res(out: &mut List, p: &str, cin: usize, cout: usize, t: usize, film: usize) {
        wb(out, &format!("{p}.in_layers.0"), vec![cin]);
        wb(out, &format!("{p}.in_layers.2"), vec![cout, cin, 3, 3]);
        wb(out, &format!("{p}.emb_layers.1"), vec![film * cout, t]);
        wb(out, &format!("{p}.out_layers.0"), vec![cout]);
        wb(out, &format!("{p}.out_layers.3"), vec![cout, cout, 3, 3]);
        if cin != cout {
            wb(out, &format!("{p}.skip_connection"), vec![cout, cin, 1, 1]);
        }
    }
    fn attn(out: &mut List, p: &str, c: usize) {
        wb(out, &format!("{p}.norm"), vec![c]);
        wb(out, &format!("{p}.qkv"), vec![3 * c, c, 1]);
        wb(out, &format!("{p}.proj_out"), vec![c, c, 1]);
    }

    let a = arch.adm.as_ref().expect("an ADM architecture");
    let mut out: List = Vec::new();
    let boc = &arch.block_out_channels;
    let l = boc.len();
    if l == 0 {
        return out;
    }
    let t = arch.time_embed_dim;
    let film = if a.use_scale_shift_norm { 2 } else { 1 };
    let o = &mut out;
    wb(o, "time_embed.0", vec![t, a.model_channels]);
    wb(o, "time_embed.2", vec![t, t]);
    wb(o, "input_blocks.0.0", vec![boc[0], arch.in_channels, 3, 3]);
    let mut skips = vec![boc[0]];
    let mut ch = boc[0];
    let mut k = 1;
    for (level, &cout) in boc.iter().enumerate() {
        for _ in 0..arch.layers_per_block {
            res(o, &format!("input_blocks.{k}.0"), ch, cout, t, film);
            ch = cout;
            if arch.down_attention[level] {
                attn(o, &format!("input_blocks.{k}.1"), ch);
            }
            skips.push(ch);
            k += 1;
        }
        if level + 1 < l {
            if a.resblock_updown {
                res(o, &format!("input_blocks.{k}.0"), ch, ch, t, film);
            } else {
                wb(o, &format!("input_blocks.{k}.0.op"), vec![ch, ch, 3, 3]);
            }
            skips.push(ch);
            k += 1;
        }
    }
    res(o, "middle_block.0", ch, ch, t, film);
    attn(o, "middle_block.1", ch);
    res(o, "middle_block.2", ch, ch, t, film);
    let mut k = 0;
    for (u, &cout) in boc.iter().rev().enumerate() {
        for i in 0..=arch.layers_per_block {
            let skip = skips.pop().expect("one skip per decoder res block");
            res(o, &format!("output_blocks.{k}.0"), ch + skip, cout, t, film);
            ch = cout;
            let mut idx = 1;
            if arch.up_attention[u] {
                attn(o, &format!("output_blocks.{k}.1"), ch);
                idx = 2;
            }
            if u + 1 < l && i == arch.layers_per_block {
                if a.resblock_updown {
                    res(o, &format!("output_blocks.{k}.{idx}"), ch, ch, t, film);
                } else {
                    wb(o, &format!("output_blocks.{k}.{idx}.conv"), vec![ch, ch, 3, 3]);
                }
            }
            k += 1;
        }
    }
    wb(o, "out.0", vec![ch]);
    wb(o, "out.2", vec![arch.out_channels, boc[0], 3, 3]);
    out
}

/// How a res block resamples.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resample {
    None,
    Up,
    Down,
}

impl Builder<'_> {
    fn resample(&mut self, name: String, x: ValueId, up: bool) -> ValueId {
        let v = &self.g.values[x];
        let (c, h, w, class) = (v.c, v.h, v.w, v.class);
        let (h, w) = if up { (2 * h, 2 * w) } else { (h / 2, w / 2) };
        let out = self.value(name, c, h, w, class);
        self.g.ops.push(Op::Resample { x, up, out });
        out
    }

    fn adm_res(&mut self, prefix: &str, x: (ValueId, Option<ValueId>), cout: usize, rs: Resample) -> ValueId {
        let a = self.arch.adm.clone().expect("an ADM architecture");
        let groups = self.arch.norm_num_groups;
        let cin = self.chans(x);
        let n1 = self.group_norm(&format!("{prefix}.in_layers.0"), x, groups, true);
        // The time-embedding projection (encoder batch, broadcast to the decoder).
        let width = if a.use_scale_shift_norm { 2 * cout } else { cout };
        let t = self.arch.time_embed_dim;
        let w = self.param(&format!("{prefix}.emb_layers.1.weight"), vec![width, t], WeightKind::Linear);
        let b = self.vector(&format!("{prefix}.emb_layers.1.bias"), width);
        let tp = self.value(format!("{prefix}.emb_layers.out"), width, 1, 1, BatchClass::Enc);
        self.g.ops.push(Op::Linear { x: self.temb, w, b, silu_input: true, out: tp });
        let add = (!a.use_scale_shift_norm).then_some(tp);
        let conv1 = format!("{prefix}.in_layers.2");
        let (h1, xs) = match rs {
            Resample::None => (self.conv(&conv1, (n1, None), cout, 3, 1, [1; 4], false, add, None), x),
            Resample::Up => {
                assert!(x.1.is_none(), "a resampling res block has one input");
                let h = self.conv(&conv1, (n1, None), cout, 3, 1, [1; 4], true, add, None);
                (h, (self.resample(format!("{prefix}.x_upd"), x.0, true), None))
            }
            Resample::Down => {
                assert!(x.1.is_none(), "a resampling res block has one input");
                let p = self.resample(format!("{prefix}.h_upd"), n1, false);
                let h = self.conv(&conv1, (p, None), cout, 3, 1, [1; 4], false, add, None);
                (h, (self.resample(format!("{prefix}.x_upd"), x.0, false), None))
            }
        };
        let p2 = format!("{prefix}.out_layers.0");
        let gamma = self.vector(&format!("{p2}.weight"), cout);
        let beta = self.vector(&format!("{p2}.bias"), cout);
        let n2 = self.like(format!("{p2}.out"), cout, h1);
        let film = a.use_scale_shift_norm.then_some(tp);
        self.g.ops.push(Op::GroupNorm { x: (h1, None), gamma, beta, groups, film, silu: true, out: n2 });
        let skip = if cin != cout {
            self.conv(&format!("{prefix}.skip_connection"), xs, cout, 1, 1, [0; 4], false, None, None)
        } else {
            assert!(xs.1.is_none(), "a concatenated input always changes the channel count");
            xs.0
        };
        self.conv(&format!("{prefix}.out_layers.3"), (n2, None), cout, 3, 1, [1; 4], false, None, Some(skip))
    }

    fn rows_param(&mut self, name: String, rows: Vec<usize>, shape: Vec<usize>, kind: WeightKind) -> usize {
        self.g.params.push(Param { source: ParamSource::Rows { name, rows, shape }, kind });
        self.g.params.len() - 1
    }

    fn adm_attention(&mut self, prefix: &str, x: ValueId, decoder: bool) -> ValueId {
        let a = self.arch.adm.clone().expect("an ADM architecture");
        let c = self.g.values[x].c;
        let n = self.group_norm(&format!("{prefix}.norm"), (x, None), self.arch.norm_num_groups, false);
        let heads = self.arch.heads(c, decoder);
        let d = c / heads;
        // The backend's attention reads q, k, v as three blocks of C channels
        // (QKVAttention's order); QKVAttentionLegacy's rows are per head [q | k | v].
        let rows: Vec<usize> = if a.use_new_attention_order {
            (0..3 * c).collect()
        } else {
            (0..3)
                .flat_map(|part| (0..heads).flat_map(move |h| (0..d).map(move |i| h * 3 * d + part * d + i)))
                .collect()
        };
        let w = self.rows_param(format!("{prefix}.qkv.weight"), rows.clone(), vec![3 * c, c, 1, 1], WeightKind::Conv);
        let b = self.rows_param(format!("{prefix}.qkv.bias"), rows, vec![3 * c], WeightKind::Vector);
        let qkv = self.conv_with(&format!("{prefix}.qkv"), (n, None), (w, b), 3 * c, 1, 1, [0; 4], false, None, None);
        let att = self.like(format!("{prefix}.attn"), c, x);
        self.g.ops.push(Op::Attention { qkv, heads, out: att });
        let w = self.param(&format!("{prefix}.proj_out.weight"), vec![c, c, 1, 1], WeightKind::Conv);
        let b = self.vector(&format!("{prefix}.proj_out.bias"), c);
        self.conv_with(&format!("{prefix}.proj_out"), (att, None), (w, b), c, 1, 1, [0; 4], false, None, Some(x))
    }
}

/// The op list of an ADM `UNetModel` (see the module notes).
pub(super) fn build(arch: &UNetArch) -> Graph {
    let a = arch.adm.clone().expect("an ADM architecture");
    let g = Graph { values: vec![], params: vec![], ops: vec![], decoder_start: 0, x: 0, h: 0, eps: 0, skips: vec![] };
    let mut b = Builder { arch, g, temb: 0 };
    let s = arch.sample_size;
    let boc = &arch.block_out_channels;
    let l = boc.len();
    let t = arch.time_embed_dim;
    let mc = a.model_channels;

    let x = b.value("x".into(), arch.in_channels, s, s, BatchClass::Enc);
    b.g.values[x].pinned = true;
    b.g.x = x;

    let ts = b.value("time_proj".into(), mc, 1, 1, BatchClass::Enc);
    b.g.ops.push(Op::TimeEmbed { out: ts });
    let w1 = b.param("time_embed.0.weight", vec![t, mc], WeightKind::Linear);
    let b1 = b.vector("time_embed.0.bias", t);
    let t1 = b.value("time_embed.0.out".into(), t, 1, 1, BatchClass::Enc);
    b.g.ops.push(Op::Linear { x: ts, w: w1, b: b1, silu_input: false, out: t1 });
    let w2 = b.param("time_embed.2.weight", vec![t, t], WeightKind::Linear);
    let b2 = b.vector("time_embed.2.bias", t);
    let temb = b.value("temb".into(), t, 1, 1, BatchClass::Enc);
    b.g.ops.push(Op::Linear { x: t1, w: w2, b: b2, silu_input: true, out: temb });
    b.g.values[temb].pinned = true;
    b.temb = temb;

    let mut cur = b.conv("input_blocks.0.0", (x, None), boc[0], 3, 1, [1; 4], false, None, None);
    let mut skips: Vec<ValueId> = vec![cur];
    let mut k = 1;
    for (level, &cout) in boc.iter().enumerate() {
        for _ in 0..arch.layers_per_block {
            cur = b.adm_res(&format!("input_blocks.{k}.0"), (cur, None), cout, Resample::None);
            if arch.down_attention[level] {
                cur = b.adm_attention(&format!("input_blocks.{k}.1"), cur, false);
            }
            skips.push(cur);
            k += 1;
        }
        if level + 1 < l {
            let p = format!("input_blocks.{k}.0");
            cur = if a.resblock_updown {
                b.adm_res(&p, (cur, None), cout, Resample::Down)
            } else {
                b.conv(&format!("{p}.op"), (cur, None), cout, 3, 2, [1; 4], false, None, None)
            };
            skips.push(cur);
            k += 1;
        }
    }
    let ch = arch.h_channels();
    cur = b.adm_res("middle_block.0", (cur, None), ch, Resample::None);
    cur = b.adm_attention("middle_block.1", cur, false);
    cur = b.adm_res("middle_block.2", (cur, None), ch, Resample::None);
    b.g.values[cur].class = BatchClass::Dec;
    b.g.values[cur].pinned = true;
    b.g.values[cur].name = "h".into();
    b.g.h = cur;
    b.g.skips = skips.clone();
    b.g.decoder_start = b.g.ops.len();

    let mut k = 0;
    for (u, &cout) in boc.iter().rev().enumerate() {
        for i in 0..=arch.layers_per_block {
            let skip = skips.pop().expect("one skip per decoder res block");
            let p = format!("output_blocks.{k}");
            cur = b.adm_res(&format!("{p}.0"), (cur, Some(skip)), cout, Resample::None);
            let mut idx = 1;
            if arch.up_attention[u] {
                cur = b.adm_attention(&format!("{p}.1"), cur, true);
                idx = 2;
            }
            if u + 1 < l && i == arch.layers_per_block {
                let q = format!("{p}.{idx}");
                cur = if a.resblock_updown {
                    b.adm_res(&q, (cur, None), cout, Resample::Up)
                } else {
                    b.conv(&format!("{q}.conv"), (cur, None), cout, 3, 1, [1; 4], true, None, None)
                };
            }
            k += 1;
        }
    }
    let n = b.group_norm("out.0", (cur, None), arch.norm_num_groups, true);
    // Only the noise prediction: the first eps_channels output rows (a learned-variance
    // model's other outputs are never used by DDIM).
    let e = arch.eps_channels();
    let c0 = boc[0];
    let w = b.rows_param("out.2.weight".into(), (0..e).collect(), vec![e, c0, 3, 3], WeightKind::Conv);
    let bias = b.rows_param("out.2.bias".into(), (0..e).collect(), vec![e], WeightKind::Vector);
    let eps = b.conv_with("out.2", (n, None), (w, bias), e, 3, 1, [1; 4], false, None, None);
    b.g.values[eps].pinned = true;
    b.g.values[eps].name = "eps".into();
    b.g.eps = eps;
    debug_assert!(skips.is_empty());
    b.g
}
