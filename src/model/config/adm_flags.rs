//! The ADM family's config: guided-diffusion / improved-diffusion `create_model` /
//! `create_gaussian_diffusion` flags (the sidecar JSON that `tools/convert_checkpoint.py`
//! writes, or the authors' `*_DICT`).

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};

use super::json::*;
use crate::model::arch::UNetArch;
use crate::model::schedule::{
    linear_betas, squaredcos_cap_v2_betas, validate_betas, DDPM_BETA_END, DDPM_BETA_START, DDPM_STEPS,
};
use crate::model::validate::validate_arch;

/// An integer list given as guided-diffusion's comma-separated string ("32,16,8") or
/// as a list.
fn get_csv_usize(m: &Map<String, Value>, key: &str) -> Result<Option<Vec<usize>>> {
    match field(m, key) {
        Field::Absent | Field::Null => Ok(None),
        Field::Val(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Field::Val(Value::String(s)) => s
            .split(',')
            .map(|x| {
                let x = x.trim();
                x.parse::<usize>().map_err(|_| {
                    if x.parse::<f64>().is_ok() {
                        anyhow!("unsupported {key} entry {x:?}: only integer multipliers are supported")
                    } else {
                        anyhow!("field {key}: {x:?} is not an integer")
                    }
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Field::Val(v) => as_list(key, v)?
            .iter()
            .map(|x| as_usize(key, x).with_context(|| format!("unsupported {key} entry {x}: only integers")))
            .collect::<Result<Vec<_>>>()
            .map(Some),
    }
}

/// `-1` (guided-diffusion's "unset") as `None`.
fn get_opt_count(m: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
    match field(m, key) {
        Field::Absent | Field::Null => Ok(None),
        Field::Val(v) if v.as_i64() == Some(-1) => Ok(None),
        Field::Val(v) => match as_usize(key, v)? {
            0 => bail!("unsupported {key} 0"),
            n => Ok(Some(n)),
        },
    }
}

/// Whether a parsed config is an ADM `create_model` flag set (the sidecar config that
/// `tools/convert_checkpoint.py` writes, or the authors' `*_DICT`).
pub(super) fn is_adm_config(v: &Value) -> bool {
    v.get("model_family").and_then(Value::as_str) == Some("adm")
        || (v.get("num_channels").is_some() && v.get("attention_resolutions").is_some())
}

/// Parses guided-diffusion's `create_model` / `create_gaussian_diffusion` flags (JSON or
/// YAML): `image_size`, `num_channels`, `num_res_blocks`, `channel_mult`,
/// `learn_sigma`, `attention_resolutions`, `num_heads`, `num_head_channels`,
/// `num_heads_upsample`, `use_scale_shift_norm`, `resblock_updown`,
/// `use_new_attention_order`, and the schedule `diffusion_steps` / `noise_schedule`
/// (plus `beta_start` / `beta_end` for a linear schedule of another range).
/// Absent keys take `create_model`'s defaults; flags that do not change the maths
/// (`dropout`, `use_fp16`, `use_checkpoint`, `timestep_respacing`) are ignored.
pub fn parse_adm_config(text: &str) -> Result<(UNetArch, Vec<f64>)> {
    adm_from_value(&parse_json_or_yaml(text)?)
}

pub(super) fn adm_from_value(v: &Value) -> Result<(UNetArch, Vec<f64>)> {
    let m = v.as_object().ok_or_else(|| anyhow!("the config is not a mapping"))?;
    if get_bool(m, "class_cond", false)? {
        bail!(
            "unsupported class_cond true: class-conditional ADMs are not supported (the \
             unconditional checkpoints have no label_emb)"
        );
    }
    for key in ["predict_xstart", "rescale_timesteps", "use_kl"] {
        if get_bool(m, key, false)? {
            bail!("unsupported {key} true");
        }
    }
    let image_size = get_usize(m, "image_size", None)?;
    let num_channels = get_usize(m, "num_channels", None)?;
    let num_res_blocks = get_usize(m, "num_res_blocks", None)?;
    let channel_mult = match get_csv_usize(m, "channel_mult")? {
        Some(c) => c,
        None => UNetArch::adm_default_channel_mult(image_size).ok_or_else(|| {
            anyhow!(
                "unsupported image_size {image_size} without channel_mult (guided-diffusion's \
                 defaults with integer multipliers: 64, 128, 256)"
            )
        })?,
    };
    if channel_mult.is_empty() || channel_mult.contains(&0) {
        bail!("field channel_mult {channel_mult:?} must be non-empty positive integers");
    }
    let attention_resolutions = get_csv_usize(m, "attention_resolutions")?.unwrap_or_else(|| vec![16]);
    if let Some(r) = attention_resolutions.iter().find(|&&r| r == 0 || !image_size.is_multiple_of(r)) {
        bail!("unsupported attention_resolutions entry {r}: not a divisor of image_size {image_size}");
    }
    let num_heads = get_usize(m, "num_heads", Some(1))?;
    let num_head_channels = get_opt_count(m, "num_head_channels")?;
    let num_heads_upsample = get_opt_count(m, "num_heads_upsample")?;
    let arch = UNetArch::adm(
        image_size,
        num_channels,
        num_res_blocks,
        &channel_mult,
        get_bool(m, "learn_sigma", false)?,
        &attention_resolutions,
        num_heads,
        num_head_channels,
        num_heads_upsample,
        get_bool(m, "use_scale_shift_norm", false)?,
        get_bool(m, "resblock_updown", false)?,
        get_bool(m, "use_new_attention_order", false)?,
    );
    validate_arch(&arch)?;

    let steps = get_usize(m, "diffusion_steps", Some(DDPM_STEPS))?;
    if steps == 0 {
        bail!("field diffusion_steps must be positive");
    }
    let kind = match field(m, "noise_schedule") {
        Field::Absent => "linear".to_string(),
        Field::Null => bail!("unsupported noise_schedule null"),
        Field::Val(x) => as_str("noise_schedule", x)?.to_string(),
    };
    let betas = match kind.as_str() {
        // guided-diffusion's get_named_beta_schedule: the 1000-step range scaled;
        // beta_start / beta_end (a diffstyle extension, absent from guided-diffusion's
        // flags) replace that range.
        "linear" => {
            let scale = DDPM_STEPS as f64 / steps as f64;
            let start = get_f64(m, "beta_start", Some(scale * DDPM_BETA_START))?;
            let end = get_f64(m, "beta_end", Some(scale * DDPM_BETA_END))?;
            linear_betas(start, end, steps)
        }
        "cosine" => {
            if m.contains_key("beta_start") || m.contains_key("beta_end") {
                bail!("beta_start / beta_end apply to noise_schedule linear only");
            }
            squaredcos_cap_v2_betas(steps)
        }
        other => bail!("unsupported noise_schedule {other:?} (supported: linear, cosine)"),
    };
    validate_betas(&betas)?;
    Ok((arch, betas))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFHQ: &str = r#"{"image_size": 256, "num_channels": 128, "num_res_blocks": 1, "learn_sigma": true,
        "attention_resolutions": "16", "num_heads": 4, "num_head_channels": 64, "use_scale_shift_norm": true,
        "resblock_updown": true}"#;

    #[test]
    fn flags_build_create_models_unet() {
        let (arch, betas) = parse_adm_config(AFHQ).unwrap();
        assert_eq!(arch, UNetArch::adm_p2_256());
        assert_eq!(betas, crate::model::schedule::default_betas());
        assert!(is_adm_config(&parse_json_or_yaml(AFHQ).unwrap()));
    }

    #[test]
    fn refuses_what_changes_the_maths_by_name() {
        let with = |extra: &str| parse_adm_config(&AFHQ.replace('}', &format!(", {extra}}}")));
        for (extra, needle) in
            [(r#""class_cond": true"#, "class_cond"), (r#""predict_xstart": true"#, "predict_xstart")]
        {
            let e = with(extra).unwrap_err();
            assert!(format!("{e:#}").contains(needle), "{e:#}");
        }
        assert!(format!("{:#}", with(r#""num_channels": 48"#).unwrap_err()).contains("GroupNorm(32)"));
    }
}
