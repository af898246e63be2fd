//! The ADM family's graph (guided-diffusion / improved-diffusion `UNetModel`), under
//! its own tensor names and shapes (attention projections are conv1d weights
//! `[o, i, 1]`).
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
//! silu(emb), 2C wide with the FiLM norm), `out_layers.{0,3}` (norm (FiLM) + SiLU, conv),
//! `skip_connection` (1x1 conv when the channels change). `AttentionBlock`: `norm`,
//! `qkv` (conv1d C -> 3C), `proj_out` (conv1d), residual.

use super::arch::UNetArch;
use super::graph::{Builder, ConvOpts, Graph, ParamSource, ResNames, Resample, ValueId};
use crate::backend::WeightKind;

/// The op list of an ADM `UNetModel` (see the module notes).
pub(super) fn build(arch: &UNetArch) -> Graph {
    let a = arch.adm.as_ref().expect("an ADM architecture");
    let mut b = Builder::new(arch);
    let boc = &arch.block_out_channels;
    let l = boc.len();
    b.time_embedding(a.model_channels, "time_embed.0", "time_embed.2");

    let mut cur = b.conv("input_blocks.0.0", (b.g.x, None), boc[0], ConvOpts::k3());
    let mut skips: Vec<ValueId> = vec![cur];
    let mut k = 1;
    for (level, &cout) in boc.iter().enumerate() {
        for _ in 0..arch.layers_per_block {
            cur = res_block(&mut b, &format!("input_blocks.{k}.0"), (cur, None), cout, Resample::None);
            if arch.down_attention[level] {
                cur = attention(&mut b, &format!("input_blocks.{k}.1"), cur, false);
            }
            skips.push(cur);
            k += 1;
        }
        if level + 1 < l {
            let p = format!("input_blocks.{k}.0");
            cur = if a.resblock_updown {
                res_block(&mut b, &p, (cur, None), cout, Resample::Down)
            } else {
                b.conv(&format!("{p}.op"), (cur, None), cout, ConvOpts::down([1; 4]))
            };
            skips.push(cur);
            k += 1;
        }
    }
    let ch = arch.h_channels();
    cur = res_block(&mut b, "middle_block.0", (cur, None), ch, Resample::None);
    cur = attention(&mut b, "middle_block.1", cur, false);
    cur = res_block(&mut b, "middle_block.2", (cur, None), ch, Resample::None);
    b.mark_h(cur, &skips);

    let mut k = 0;
    for (u, &cout) in boc.iter().rev().enumerate() {
        for i in 0..=arch.layers_per_block {
            let skip = skips.pop().expect("one skip per decoder res block");
            let p = format!("output_blocks.{k}");
            cur = res_block(&mut b, &format!("{p}.0"), (cur, Some(skip)), cout, Resample::None);
            let mut idx = 1;
            if arch.up_attention[u] {
                cur = attention(&mut b, &format!("{p}.1"), cur, true);
                idx = 2;
            }
            if u + 1 < l && i == arch.layers_per_block {
                let q = format!("{p}.{idx}");
                cur = if a.resblock_updown {
                    res_block(&mut b, &q, (cur, None), cout, Resample::Up)
                } else {
                    b.conv(&format!("{q}.conv"), (cur, None), cout, ConvOpts::k3().upsample(true))
                };
            }
            k += 1;
        }
    }
    let n = b.group_norm("out.0", (cur, None), arch.norm_num_groups, true);
    // Only the noise prediction: the first eps_channels output rows (a learned-variance
    // model's other outputs are never used by DDIM).
    let (e, c0, all) = (arch.eps_channels(), boc[0], arch.out_channels);
    let w = b.tensor("out.2.weight".into(), vec![all, c0, 3, 3]);
    let bias = b.tensor("out.2.bias".into(), vec![all]);
    let rows: Vec<usize> = (0..e).collect();
    let w = b.param(ParamSource::Rows { tensor: w, rows: rows.clone() }, vec![e, c0, 3, 3], WeightKind::Conv);
    let bias = b.param(ParamSource::Rows { tensor: bias, rows }, vec![e], WeightKind::Vector);
    let eps = b.conv_with("out.2", (n, None), (w, bias), e, ConvOpts::k3());
    debug_assert!(skips.is_empty());
    b.finish(eps)
}

/// `ResBlock`'s layers.
const RES_BLOCK: ResNames = ResNames {
    norm1: "in_layers.0",
    conv1: "in_layers.2",
    temb: "emb_layers.1",
    temb_out: "emb_layers",
    norm2: "out_layers.0",
    conv2: "out_layers.3",
    shortcut: "skip_connection",
};

/// `ResBlock`: with `use_scale_shift_norm` the time embedding is FiLM in the second
/// norm; up / down blocks resample between the first norm and conv, and the skip path.
fn res_block(b: &mut Builder, prefix: &str, x: (ValueId, Option<ValueId>), cout: usize, rs: Resample) -> ValueId {
    let film = b.arch.adm.as_ref().expect("an ADM architecture").use_scale_shift_norm;
    b.res_block(prefix, &RES_BLOCK, x, cout, film, rs)
}

/// `AttentionBlock`: norm, qkv (a conv1d C -> 3C), attention, proj_out, residual.
fn attention(b: &mut Builder, prefix: &str, x: ValueId, decoder: bool) -> ValueId {
    let new_order = b.arch.adm.as_ref().expect("an ADM architecture").use_new_attention_order;
    let c = b.g.values[x].c;
    let heads = b.arch.heads(c, decoder);
    // Heads that do not divide c are refused by validation, which walks this graph.
    let d = c / heads.max(1);
    let norm = b.norm_params(&format!("{prefix}.norm"), c);
    let qkv_w = b.tensor(format!("{prefix}.qkv.weight"), vec![3 * c, c, 1]);
    let qkv_b = b.tensor(format!("{prefix}.qkv.bias"), vec![3 * c]);
    let proj_w = b.stored(format!("{prefix}.proj_out.weight"), vec![c, c, 1], vec![c, c, 1, 1], WeightKind::Conv);
    let proj_b = b.vector(format!("{prefix}.proj_out.bias"), c);

    let n = b.group_norm_with(&format!("{prefix}.norm"), (x, None), norm, b.arch.norm_num_groups, None, false);
    // The backend's attention reads q, k, v as three blocks of C channels
    // (QKVAttention's order); QKVAttentionLegacy's rows are per head [q | k | v].
    let rows: Vec<usize> = if new_order {
        (0..3 * c).collect()
    } else {
        (0..3).flat_map(|part| (0..heads).flat_map(move |h| (0..d).map(move |i| h * 3 * d + part * d + i))).collect()
    };
    let w = b.param(ParamSource::Rows { tensor: qkv_w, rows: rows.clone() }, vec![3 * c, c, 1, 1], WeightKind::Conv);
    let bias = b.param(ParamSource::Rows { tensor: qkv_b, rows }, vec![3 * c], WeightKind::Vector);
    let qkv = b.conv_with(&format!("{prefix}.qkv"), (n, None), (w, bias), 3 * c, ConvOpts::k1());
    let att = b.attend(prefix, qkv, heads, x);
    b.conv_with(&format!("{prefix}.proj_out"), (att, None), (proj_w, proj_b), c, ConvOpts::k1().residual(x))
}
