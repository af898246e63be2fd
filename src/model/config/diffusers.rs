//! diffusers' `UNet2DModel` `config.json`: every field that changes the maths is
//! honoured or refused by name; absent keys take `UNet2DModel.__init__`'s defaults.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::json::*;
use crate::model::arch::UNetArch;
use crate::model::validate::validate_arch;

/// Parses a diffusers `UNet2DModel` `config.json` into the normalised architecture.
/// Absent keys take diffusers' `UNet2DModel.__init__` defaults.
pub fn parse_diffusers_unet_config(text: &str) -> Result<UNetArch> {
    let v: Value = serde_json::from_str(text).context("config.json is not valid JSON")?;
    diffusers_unet_from_value(&v)
}

pub(super) fn diffusers_unet_from_value(v: &Value) -> Result<UNetArch> {
    let m = v.as_object().ok_or_else(|| anyhow!("the config is not a JSON object"))?;

    // Refusals first: anything that changes the maths and that we do not implement.
    if let Field::Val(c) = field(m, "_class_name") {
        let c = as_str("_class_name", c)?;
        if c != "UNet2DModel" {
            bail!("unsupported _class_name {c:?}: only UNet2DModel (pixel-space, unconditional) is supported");
        }
    }
    // diffusers' get_activation maps both names to SiLU.
    check_str(m, "act_fn", &["silu", "swish"], false)?;
    check_str(m, "time_embedding_type", &["positional"], false)?;
    check_str(m, "resnet_time_scale_shift", &["default"], false)?;
    check_str(m, "downsample_type", &["conv"], true)?;
    check_str(m, "upsample_type", &["conv"], true)?;
    if get_bool(m, "center_input_sample", false)? {
        bail!("unsupported center_input_sample true");
    }
    if let Field::Val(c) = field(m, "class_embed_type") {
        bail!("unsupported class_embed_type {c} (class-conditional models are not supported)");
    }
    if let Field::Val(c) = field(m, "num_class_embeds") {
        bail!("unsupported num_class_embeds {c} (class-conditional models are not supported)");
    }
    let scale = get_f64(m, "mid_block_scale_factor", Some(1.0))?;
    if scale != 1.0 {
        bail!("unsupported mid_block_scale_factor {scale} (only 1)");
    }

    let sample_size = match field(m, "sample_size") {
        Field::Val(Value::Array(a)) => {
            if a.len() != 2 {
                bail!("field sample_size: expected an integer or [h, w], got {}", Value::Array(a.clone()));
            }
            let h = as_usize("sample_size", &a[0])?;
            let w = as_usize("sample_size", &a[1])?;
            if h != w {
                bail!("unsupported sample_size [{h}, {w}]: only square models are supported");
            }
            h
        }
        Field::Val(x) => as_usize("sample_size", x)?,
        Field::Absent | Field::Null => {
            bail!("field sample_size is missing or null; the model's resolution is required")
        }
    };

    let in_channels = get_usize(m, "in_channels", Some(3))?;
    let out_channels = get_usize(m, "out_channels", Some(3))?;
    let block_out_channels = get_usize_list(m, "block_out_channels", &[224, 448, 672, 896])?;
    let layers_per_block = get_usize(m, "layers_per_block", Some(2))?;
    let down_types =
        get_str_list(m, "down_block_types", &["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"])?;
    let up_types =
        get_str_list(m, "up_block_types", &["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"])?;
    let l = block_out_channels.len();
    if l == 0 {
        bail!("field block_out_channels is empty");
    }
    if down_types.len() != l || up_types.len() != l {
        bail!(
            "mismatched list lengths: block_out_channels has {l} entries, down_block_types {}, \
             up_block_types {}",
            down_types.len(),
            up_types.len()
        );
    }
    // diffusers strips a "UNetRes" prefix from block type names.
    let strip = |s: &str| s.strip_prefix("UNetRes").unwrap_or(s).to_string();
    let down_attention = down_types
        .iter()
        .map(|t| match strip(t).as_str() {
            "DownBlock2D" => Ok(false),
            "AttnDownBlock2D" => Ok(true),
            _ => bail!("unsupported down_block_types entry {t:?} (supported: DownBlock2D, AttnDownBlock2D)"),
        })
        .collect::<Result<Vec<_>>>()?;
    let up_attention = up_types
        .iter()
        .map(|t| match strip(t).as_str() {
            "UpBlock2D" => Ok(false),
            "AttnUpBlock2D" => Ok(true),
            _ => bail!("unsupported up_block_types entry {t:?} (supported: UpBlock2D, AttnUpBlock2D)"),
        })
        .collect::<Result<Vec<_>>>()?;

    match field(m, "mid_block_type") {
        Field::Absent => {}
        Field::Null => bail!("unsupported mid_block_type null: DiffStyle's h-space is the middle block's output"),
        Field::Val(t) => {
            let t = as_str("mid_block_type", t)?;
            if t != "UNetMidBlock2D" {
                bail!("unsupported mid_block_type {t:?} (supported: UNetMidBlock2D)");
            }
        }
    }
    let mid_attention = get_bool(m, "add_attention", true)?;

    let head_dim_absent = matches!(field(m, "attention_head_dim"), Field::Absent);
    let attention_head_dim = match field(m, "attention_head_dim") {
        Field::Absent => Some(8),
        Field::Null => None,
        Field::Val(x) => {
            let d = as_usize("attention_head_dim", x)?;
            if d == 0 {
                bail!("unsupported attention_head_dim 0");
            }
            Some(d)
        }
    };
    let norm_num_groups = match field(m, "norm_num_groups") {
        Field::Absent => 32,
        Field::Null => bail!("unsupported norm_num_groups null"),
        Field::Val(x) => as_usize("norm_num_groups", x)?,
    };
    let mid_attn_norm_groups = match field(m, "attn_norm_num_groups") {
        Field::Absent | Field::Null => norm_num_groups,
        Field::Val(x) => as_usize("attn_norm_num_groups", x)?,
    };
    let norm_eps = get_f64(m, "norm_eps", Some(1e-5))? as f32;
    let downsample_padding = get_usize(m, "downsample_padding", Some(1))?;
    if downsample_padding > 1 {
        bail!("unsupported downsample_padding {downsample_padding} (supported: 0, 1)");
    }
    let flip_sin_to_cos = get_bool(m, "flip_sin_to_cos", true)?;
    let freq_shift = get_f64(m, "freq_shift", Some(0.0))? as f32;
    let time_embed_dim = match field(m, "time_embedding_dim") {
        Field::Absent | Field::Null => 4 * block_out_channels[0],
        // diffusers: `time_embedding_dim or 4 * block_out_channels[0]` (0 is falsy)
        Field::Val(x) => match as_usize("time_embedding_dim", x)? {
            0 => 4 * block_out_channels[0],
            d => d,
        },
    };

    let arch = UNetArch {
        sample_size,
        in_channels,
        out_channels,
        block_out_channels,
        layers_per_block,
        down_attention,
        up_attention,
        mid_attention,
        attention_head_dim,
        norm_num_groups,
        mid_attn_norm_groups,
        norm_eps,
        downsample_padding,
        flip_sin_to_cos,
        freq_shift,
        time_embed_dim,
        adm: None,
    };
    validate_arch(&arch).map_err(|e| {
        if head_dim_absent && e.to_string().contains("attention_head_dim") {
            e.context("attention_head_dim is absent from the config, so diffusers' default 8 applies")
        } else {
            e
        }
    })?;
    Ok(arch)
}

/// Reads a diffusers `UNet2DModel` `config.json` file.
pub fn load_diffusers_unet_config(path: &Path) -> Result<UNetArch> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_diffusers_unet_config(&text).with_context(|| format!("config {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = r#"{"sample_size": 16, "block_out_channels": [8, 16], "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "norm_num_groups": 4, "attention_head_dim": null}"#;

    #[test]
    fn reads_the_fields_and_diffusers_defaults() {
        let a = parse_diffusers_unet_config(TINY).unwrap();
        assert_eq!((a.in_channels, a.out_channels, a.time_embed_dim), (3, 3, 32));
        assert_eq!((a.down_attention.clone(), a.up_attention.clone()), (vec![false, true], vec![true, false]));
        assert_eq!((a.attention_head_dim, a.norm_eps, a.flip_sin_to_cos), (None, 1e-5, true));
    }

    #[test]
    fn refuses_by_field() {
        for (key, value) in [("resnet_time_scale_shift", r#""scale_shift""#), ("norm_num_groups", "3")] {
            let e = parse_diffusers_unet_config(&TINY.replace('}', &format!(r#", "{key}": {value}}}"#))).unwrap_err();
            assert!(format!("{e:#}").contains(key), "{key}: {e:#}");
        }
    }
}
