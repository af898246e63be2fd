//! Architecture checks: first the fields the graph builders rely on (non-empty
//! levels, a resolution the down path halves exactly, positive widths, ...), then the
//! built graph itself, op by op: every group norm's groups divide its channels and
//! every attention layer's heads divide its channels. The second part walks the ops,
//! so it sees exactly the layers the U-Net runs, decoder concatenations included.

use anyhow::{bail, Result};

use super::arch::{AdmOptions, UNetArch};
use super::graph::{Graph, Op};

/// Checks the invariants the U-Net code relies on.
pub fn validate_arch(arch: &UNetArch) -> Result<()> {
    let l = arch.levels();
    if l == 0 {
        bail!("block_out_channels is empty");
    }
    if arch.block_out_channels.contains(&0) {
        bail!("block_out_channels {:?} contains 0", arch.block_out_channels);
    }
    if arch.in_channels == 0 || arch.out_channels == 0 {
        bail!("in_channels ({}) and out_channels ({}) must be positive", arch.in_channels, arch.out_channels);
    }
    if arch.layers_per_block == 0 {
        bail!("layers_per_block must be at least 1");
    }
    if arch.down_attention.len() != l || arch.up_attention.len() != l {
        bail!(
            "attention flags ({} down, {} up) do not match the {l} levels of block_out_channels",
            arch.down_attention.len(),
            arch.up_attention.len()
        );
    }
    if arch.time_embed_dim == 0 {
        bail!("time embedding dimension must be positive");
    }
    if !(arch.norm_eps.is_finite() && arch.norm_eps > 0.0) {
        bail!("norm_eps {} must be positive", arch.norm_eps);
    }
    if arch.downsample_padding > 1 {
        bail!("downsample_padding {} is not supported (0 or 1)", arch.downsample_padding);
    }
    if arch.norm_num_groups == 0 || arch.mid_attn_norm_groups == 0 {
        bail!("norm_num_groups / attn_norm_num_groups must be positive");
    }
    let factor = 1usize << (l - 1);
    if arch.sample_size == 0 || !arch.sample_size.is_multiple_of(factor) {
        bail!(
            "sample_size {} is not divisible by 2^{} (the {l} resolution levels halve it {} times)",
            arch.sample_size,
            l - 1,
            l - 1
        );
    }
    let half = (arch.time_proj_dim() / 2) as f32;
    if half - arch.freq_shift <= 0.0 {
        bail!(
            "timestep embedding of width {} with freq_shift {} divides by zero",
            arch.time_proj_dim(),
            arch.freq_shift
        );
    }
    match &arch.adm {
        Some(a) => validate_adm_fields(arch, a)?,
        None => {
            if !arch.freq_shift.is_finite() {
                bail!("freq_shift {} is not finite", arch.freq_shift);
            }
        }
    }
    validate_graph(arch, &Graph::build(arch))
}

/// The ADM family's own fields: eps in the first `in_channels` outputs, positive
/// widths and head counts.
fn validate_adm_fields(arch: &UNetArch, a: &AdmOptions) -> Result<()> {
    if a.model_channels == 0 {
        bail!("num_channels must be positive");
    }
    if arch.out_channels != arch.in_channels && arch.out_channels != 2 * arch.in_channels {
        bail!(
            "out_channels {} must be in_channels ({}) or, with a learned variance, twice it",
            arch.out_channels,
            arch.in_channels
        );
    }
    if a.num_heads == 0 || a.num_heads_upsample == 0 {
        bail!("num_heads / num_heads_upsample must be positive");
    }
    Ok(())
}

/// Group and head counts against the channels of every norm and attention op; the
/// messages name the config field and the layer (its checkpoint name).
fn validate_graph(arch: &UNetArch, g: &Graph) -> Result<()> {
    for op in &g.ops {
        match op {
            Op::GroupNorm { gamma, groups, out, .. } => {
                let c = g.values[*out].c;
                if c.is_multiple_of(*groups) {
                    continue;
                }
                let layer = g.param_name(*gamma).trim_end_matches(".weight");
                match &arch.adm {
                    Some(a) => bail!(
                        "GroupNorm({groups}) does not divide the {c} channels of {layer} (num_channels {} x \
                         channel_mult)",
                        a.model_channels
                    ),
                    None => {
                        // Only the middle attention's norm has its own count; when the two
                        // counts are equal a failing norm comes earlier (a res block of the
                        // same width), so naming by value is exact.
                        let field =
                            if *groups == arch.norm_num_groups { "norm_num_groups" } else { "attn_norm_num_groups" };
                        bail!("{field} {groups} does not divide the {c} channels of the group norm {layer}")
                    }
                }
            }
            Op::Attention { heads, out, .. } => {
                let c = g.values[*out].c;
                let ok = match arch.attention_head_dim {
                    Some(d) => d > 0 && c.is_multiple_of(d),
                    None => *heads > 0 && c.is_multiple_of(*heads),
                };
                if ok {
                    continue;
                }
                // The attention output is `{layer}.attn` (graph.rs, `Builder::attend`).
                let name = &g.values[*out].name;
                let layer = name.strip_suffix(".attn").unwrap_or(name);
                let what = match (arch.attention_head_dim, &arch.adm) {
                    (Some(d), None) => format!("attention_head_dim {d} does not"),
                    (Some(d), Some(_)) => format!("num_head_channels {d} do not"),
                    (None, _) => format!("{heads} heads do not"),
                };
                bail!("{what} divide the {c} channels of the attention layer {layer}");
            }
            _ => {}
        }
    }
    Ok(())
}
