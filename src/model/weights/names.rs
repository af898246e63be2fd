//! The other spellings of a checkpoint's tensor names, mapped to the canonical ones
//! the graph declares: original DDPM names (`temb.dense.0`, `down.1.block.0`, ...) and
//! old diffusers attention names (`query`, `key`, `value`, `proj_attn`).

fn map_resnet_part(s: &str) -> &str {
    match s {
        "temb_proj" => "time_emb_proj",
        "nin_shortcut" => "conv_shortcut",
        other => other,
    }
}

fn map_attn_part(s: &str) -> Option<&'static str> {
    Some(match s {
        "norm" => "group_norm",
        "q" => "to_q",
        "k" => "to_k",
        "v" => "to_v",
        "proj_out" => "to_out.0",
        _ => return None,
    })
}

/// Maps an original-DDPM name (`temb.dense.0.weight`, `down.1.block.0.nin_shortcut.bias`,
/// `up.3.attn.2.q.weight`, ...) to its canonical diffusers name. `levels` is needed
/// because the DDPM up path is indexed by resolution level (up block = levels-1-level).
fn map_ddpm_name(name: &str, levels: usize) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let tail = |k: usize| parts[k..].join(".");
    let idx = |s: &str| s.parse::<usize>().ok();
    match parts.as_slice() {
        ["temb", "dense", n, _] => {
            let lin = match *n {
                "0" => "linear_1",
                "1" => "linear_2",
                _ => return None,
            };
            Some(format!("time_embedding.{lin}.{}", tail(3)))
        }
        ["norm_out", _] => Some(format!("conv_norm_out.{}", tail(1))),
        ["down" | "up", level, kind, rest @ ..] => {
            let level = idx(level)?;
            let is_up = parts[0] == "up";
            let (block, i) = if is_up {
                if level >= levels {
                    return None;
                }
                ("up_blocks", levels - 1 - level)
            } else {
                ("down_blocks", level)
            };
            match (*kind, rest) {
                ("block", [j, part, p]) => {
                    Some(format!("{block}.{i}.resnets.{}.{}.{p}", idx(j)?, map_resnet_part(part)))
                }
                ("attn", [j, part, p]) => {
                    Some(format!("{block}.{i}.attentions.{}.{}.{p}", idx(j)?, map_attn_part(part)?))
                }
                ("downsample", ["conv", p]) if !is_up => Some(format!("{block}.{i}.downsamplers.0.conv.{p}")),
                ("upsample", ["conv", p]) if is_up => Some(format!("{block}.{i}.upsamplers.0.conv.{p}")),
                _ => None,
            }
        }
        ["mid", which, part, p] => match *which {
            "block_1" => Some(format!("mid_block.resnets.0.{}.{p}", map_resnet_part(part))),
            "block_2" => Some(format!("mid_block.resnets.1.{}.{p}", map_resnet_part(part))),
            "attn_1" => Some(format!("mid_block.attentions.0.{}.{p}", map_attn_part(part)?)),
            _ => None,
        },
        _ => None,
    }
}

/// Renames old diffusers attention parameters (`query`, `key`, `value`, `proj_attn`)
/// inside `...attentions.{j}.` to the new names.
fn map_old_attention_name(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    let n = parts.len();
    if n >= 4 && parts[n - 4] == "attentions" && parts[n - 3].parse::<usize>().is_ok() {
        let new = match parts[n - 2] {
            "query" => "to_q",
            "key" => "to_k",
            "value" => "to_v",
            "proj_attn" => "to_out.0",
            _ => return name.to_string(),
        };
        return format!("{}.{new}.{}", parts[..n - 2].join("."), parts[n - 1]);
    }
    name.to_string()
}

/// The canonical name for a stored tensor name: strips a leading `module.`, maps the
/// original DDPM names and the old diffusers attention names. Names that map to
/// nothing known are returned unchanged (and later reported as unexpected).
pub fn canonical_name(name: &str, levels: usize) -> String {
    let name = name.strip_prefix("module.").unwrap_or(name);
    let first = name.split('.').next().unwrap_or("");
    if matches!(first, "temb" | "down" | "mid" | "up" | "norm_out") {
        if let Some(mapped) = map_ddpm_name(name, levels) {
            return mapped;
        }
        return name.to_string();
    }
    map_old_attention_name(name)
}

/// Attention projections stored as 1x1 convolutions (`[C, C, 1, 1]`, original DDPM)
/// become `[C, C]`.
pub(super) fn is_attention_projection(canonical: &str) -> bool {
    canonical.contains(".attentions.")
        && [".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight"].iter().any(|s| canonical.ends_with(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_maps_to_the_declared_name() {
        // The up path of the original DDPM is indexed by resolution level.
        for (stored, canonical) in [
            ("temb.dense.1.bias", "time_embedding.linear_2.bias"),
            ("down.1.block.0.nin_shortcut.weight", "down_blocks.1.resnets.0.conv_shortcut.weight"),
            ("up.2.attn.1.q.weight", "up_blocks.0.attentions.1.to_q.weight"),
            ("mid.attn_1.proj_out.bias", "mid_block.attentions.0.to_out.0.bias"),
            ("module.norm_out.weight", "conv_norm_out.weight"),
            ("down_blocks.1.attentions.0.proj_attn.weight", "down_blocks.1.attentions.0.to_out.0.weight"),
        ] {
            assert_eq!(canonical_name(stored, 3), canonical, "{stored}");
        }
        // Unknown names come back unchanged, to be reported as unexpected.
        assert_eq!(canonical_name("up.7.block.0.conv1.weight", 3), "up.7.block.0.conv1.weight");
        assert!(is_attention_projection("mid_block.attentions.0.to_k.weight"));
        assert!(!is_attention_projection("mid_block.attentions.0.to_k.bias"));
    }
}
