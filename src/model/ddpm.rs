//! The DDPM family's graph: diffusers' `UNet2DModel` (`DownBlock2D` /
//! `AttnDownBlock2D`, `UNetMidBlock2D`, `UpBlock2D` / `AttnUpBlock2D`), which is the
//! original DDPM `Model` under other names. Tensor names are the diffusers ones with
//! the new attention names (`to_q`, `to_k`, `to_v`, `to_out.0`, projections `[C, C]`);
//! `weights/names.rs` maps the other spellings onto them.

use super::arch::UNetArch;
use super::graph::{Builder, ConvOpts, Graph, ParamSource, ResNames, Resample, ValueId};
use crate::backend::WeightKind;

/// The op list of a DDPM-family U-Net.
pub(super) fn build(arch: &UNetArch) -> Graph {
    let mut b = Builder::new(arch);
    let c0 = arch.block_out_channels[0];
    b.time_embedding(c0, "time_embedding.linear_1", "time_embedding.linear_2");

    let mut cur = b.conv("conv_in", (b.g.x, None), c0, ConvOpts::k3());
    let mut skips = vec![cur];
    let levels = arch.levels();
    for (i, &cout) in arch.block_out_channels.iter().enumerate() {
        for j in 0..arch.layers_per_block {
            cur = resnet(&mut b, &format!("down_blocks.{i}.resnets.{j}"), (cur, None), cout);
            if arch.down_attention[i] {
                cur = attention(&mut b, &format!("down_blocks.{i}.attentions.{j}"), cur, arch.norm_num_groups);
            }
            skips.push(cur);
        }
        if i + 1 < levels {
            // Original DDPM: pad (0, 1, 0, 1) then a stride-2 conv without padding.
            let pad = if arch.downsample_padding == 0 { [0, 0, 1, 1] } else { [1; 4] };
            let p = format!("down_blocks.{i}.downsamplers.0.conv");
            cur = b.conv(&p, (cur, None), cout, ConvOpts::down(pad));
            skips.push(cur);
        }
    }
    let ch = arch.h_channels();
    cur = resnet(&mut b, "mid_block.resnets.0", (cur, None), ch);
    if arch.mid_attention {
        cur = attention(&mut b, "mid_block.attentions.0", cur, arch.mid_attn_norm_groups);
    }
    cur = resnet(&mut b, "mid_block.resnets.1", (cur, None), ch);
    b.mark_h(cur, &skips);

    let rev: Vec<usize> = arch.block_out_channels.iter().rev().copied().collect();
    for (u, &cout) in rev.iter().enumerate() {
        for j in 0..=arch.layers_per_block {
            let skip = skips.pop().expect("one skip per decoder res block");
            cur = resnet(&mut b, &format!("up_blocks.{u}.resnets.{j}"), (cur, Some(skip)), cout);
            if arch.up_attention[u] {
                cur = attention(&mut b, &format!("up_blocks.{u}.attentions.{j}"), cur, arch.norm_num_groups);
            }
        }
        if u + 1 < levels {
            let p = format!("up_blocks.{u}.upsamplers.0.conv");
            cur = b.conv(&p, (cur, None), cout, ConvOpts::k3().upsample(true));
        }
    }
    let n = b.group_norm("conv_norm_out", (cur, None), arch.norm_num_groups, true);
    let eps = b.conv("conv_out", (n, None), arch.out_channels, ConvOpts::k3());
    debug_assert!(skips.is_empty());
    b.finish(eps)
}

/// `ResnetBlock2D`'s layers.
const RESNET: ResNames = ResNames {
    norm1: "norm1",
    conv1: "conv1",
    temb: "time_emb_proj",
    temb_out: "time_emb_proj",
    norm2: "norm2",
    conv2: "conv2",
    shortcut: "conv_shortcut",
};

/// `ResnetBlock2D`: the time-embedding projection added after conv1, no resampling.
fn resnet(b: &mut Builder, prefix: &str, x: (ValueId, Option<ValueId>), cout: usize) -> ValueId {
    b.res_block(prefix, &RESNET, x, cout, false, Resample::None)
}

/// `Attention` (one or more heads, residual): group norm, q / k / v projections (run
/// as one 1x1 conv over their concatenated weights), attention, output projection.
fn attention(b: &mut Builder, prefix: &str, x: ValueId, groups: usize) -> ValueId {
    let c = b.g.values[x].c;
    let norm = b.norm_params(&format!("{prefix}.group_norm"), c);
    let mut w = vec![];
    let mut bias = vec![];
    for p in ["to_q", "to_k", "to_v"] {
        w.push(b.tensor(format!("{prefix}.{p}.weight"), vec![c, c]));
        bias.push(b.tensor(format!("{prefix}.{p}.bias"), vec![c]));
    }
    let out_w = b.stored(format!("{prefix}.to_out.0.weight"), vec![c, c], vec![c, c, 1, 1], WeightKind::Conv);
    let out_b = b.vector(format!("{prefix}.to_out.0.bias"), c);

    let n = b.group_norm_with(&format!("{prefix}.group_norm"), (x, None), norm, groups, None, false);
    let wqkv = b.param(ParamSource::Concat(w), vec![3 * c, c, 1, 1], WeightKind::Conv);
    let bqkv = b.param(ParamSource::Concat(bias), vec![3 * c], WeightKind::Vector);
    let qkv = b.conv_named(format!("{prefix}.qkv"), (n, None), (wqkv, bqkv), 3 * c, ConvOpts::k1());
    let heads = b.arch.heads(c, false);
    let a = b.attend(prefix, qkv, heads, x);
    b.conv_with(prefix, (a, None), (out_w, out_b), c, ConvOpts::k1().residual(x))
}
