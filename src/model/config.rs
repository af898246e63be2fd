//! Model configuration: diffusers `UNet2DModel` `config.json`, the authors' config
//! layout (`configs/*.yml`, as YAML or JSON), built-in presets, and the noise schedule
//! (`scheduler_config.json`).
//!
//! Every field that changes the maths is either honoured or refused with an error that
//! names the field and its value; fields that cannot change the maths are ignored.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};

use crate::model::arch::UNetArch;
use crate::model::schedule::{
    default_betas, linear_betas, scaled_linear_betas, squaredcos_cap_v2_betas, Schedule, DDPM_BETA_END,
    DDPM_BETA_START, DDPM_STEPS,
};
use crate::model::validate::validate_arch;

/// A model description: architecture plus, when the format carries one, the betas of
/// its training schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: UNetArch,
    /// `Some` when the configuration itself defines the schedule (authors' layout,
    /// presets); `None` for a diffusers `config.json` (the schedule lives in the
    /// scheduler config).
    pub betas: Option<Vec<f64>>,
    /// What the configuration was read from, for messages.
    pub source: String,
}

impl ModelConfig {
    /// The schedule the configuration defines, else the DDPM default.
    pub fn schedule_or_default(&self) -> Schedule {
        self.betas.as_deref().map_or_else(Schedule::ddpm_linear, Schedule::from_betas)
    }
}

// ---------------------------------------------------------------------------------
// Presets

/// A built-in preset: a name, a one-line description, and its configuration.
pub struct Preset {
    pub name: &'static str,
    pub description: &'static str,
    build: fn() -> (UNetArch, Vec<f64>),
}

fn preset_ddpm_256() -> (UNetArch, Vec<f64>) {
    (UNetArch::ddpm_256(), default_betas())
}

fn preset_adm_p2_256() -> (UNetArch, Vec<f64>) {
    (UNetArch::adm_p2_256(), default_betas())
}

fn preset_adm_imagenet_256() -> (UNetArch, Vec<f64>) {
    (UNetArch::adm_imagenet_256(), default_betas())
}

/// All built-in presets (`--arch NAME`). New families add a row here.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "ddpm-256",
        description: "256x256 DDPM U-Net (google/ddpm-celebahq-256, -church-256, -bedroom-256; \
                      the authors' CelebA-HQ / LSUN models), linear betas 1e-4..0.02 over 1000",
        build: preset_ddpm_256,
    },
    Preset {
        name: "adm-afhq-256",
        description: "256x256 ADM of ILVR's AFHQ-dog (afhq_dog_4m.pt; the authors' AFHQ_DICT: 128 \
                      channels, 1 res block, attention at 16, 64 channels per head, FiLM norm, \
                      res-block resampling, learned sigma), linear betas 1e-4..0.02 over 1000",
        build: preset_adm_p2_256,
    },
    Preset {
        name: "adm-ffhq-p2-256",
        description: "256x256 ADM of P2 weighting's FFHQ (ffhq_10m.pt; built by the authors with \
                      AFHQ_DICT: same architecture as adm-afhq-256)",
        build: preset_adm_p2_256,
    },
    Preset {
        name: "adm-metfaces-p2-256",
        description: "256x256 ADM of P2 weighting's MetFaces (metface_p2.pt; the authors' \
                      METFACE_DICT: same architecture as adm-afhq-256)",
        build: preset_adm_p2_256,
    },
    Preset {
        name: "adm-imagenet-256-uncond",
        description: "256x256 unconditional ImageNet ADM (256x256_diffusion_uncond.pt; the authors' \
                      IMAGENET_DICT: 256 channels, 2 res blocks, attention at 32/16/8, 64 channels \
                      per head, FiLM norm, res-block resampling, learned sigma)",
        build: preset_adm_imagenet_256,
    },
];

/// Names of the built-in presets.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

/// Looks up a built-in preset by name.
pub fn preset(name: &str) -> Result<ModelConfig> {
    let p = PRESETS
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| anyhow!("unknown architecture preset {name:?} (known: {})", preset_names().join(", ")))?;
    let (arch, betas) = (p.build)();
    validate_arch(&arch).with_context(|| format!("preset {name}"))?;
    Ok(ModelConfig { arch, betas: Some(betas), source: format!("preset {name}") })
}

// ---------------------------------------------------------------------------------
// Generic JSON helpers (distinguish an absent key from an explicit null)

enum Field<'a> {
    Absent,
    Null,
    Val(&'a Value),
}

fn field<'a>(m: &'a Map<String, Value>, key: &str) -> Field<'a> {
    match m.get(key) {
        None => Field::Absent,
        Some(Value::Null) => Field::Null,
        Some(v) => Field::Val(v),
    }
}

fn as_usize(key: &str, v: &Value) -> Result<usize> {
    if let Some(u) = v.as_u64() {
        return Ok(u as usize);
    }
    if let Some(f) = v.as_f64() {
        if f >= 0.0 && f.fract() == 0.0 && f < 1e15 {
            return Ok(f as usize);
        }
    }
    bail!("field {key}: expected a non-negative integer, got {v}")
}

fn as_f64(key: &str, v: &Value) -> Result<f64> {
    v.as_f64().ok_or_else(|| anyhow!("field {key}: expected a number, got {v}"))
}

fn as_bool(key: &str, v: &Value) -> Result<bool> {
    v.as_bool().ok_or_else(|| anyhow!("field {key}: expected true or false, got {v}"))
}

fn as_str<'a>(key: &str, v: &'a Value) -> Result<&'a str> {
    v.as_str().ok_or_else(|| anyhow!("field {key}: expected a string, got {v}"))
}

fn as_list<'a>(key: &str, v: &'a Value) -> Result<&'a Vec<Value>> {
    v.as_array().ok_or_else(|| anyhow!("field {key}: expected a list, got {v}"))
}

/// Required-or-default readers. `null` counts as "use the default" only where the
/// caller says so.
fn get_usize(m: &Map<String, Value>, key: &str, default: Option<usize>) -> Result<usize> {
    match field(m, key) {
        Field::Val(v) => as_usize(key, v),
        Field::Absent => default.ok_or_else(|| anyhow!("missing field {key}")),
        Field::Null => bail!("field {key} is null; an integer is required"),
    }
}

fn get_f64(m: &Map<String, Value>, key: &str, default: Option<f64>) -> Result<f64> {
    match field(m, key) {
        Field::Val(v) => as_f64(key, v),
        Field::Absent => default.ok_or_else(|| anyhow!("missing field {key}")),
        Field::Null => bail!("field {key} is null; a number is required"),
    }
}

fn get_bool(m: &Map<String, Value>, key: &str, default: bool) -> Result<bool> {
    match field(m, key) {
        Field::Val(v) => as_bool(key, v),
        Field::Absent => Ok(default),
        Field::Null => bail!("field {key} is null; true or false is required"),
    }
}

/// A string field that, when present, must equal one of `allowed` (an absent key
/// means the default, which is allowed; `null` is accepted only with `null_ok`).
fn check_str(m: &Map<String, Value>, key: &str, allowed: &[&str], null_ok: bool) -> Result<()> {
    match field(m, key) {
        Field::Absent => Ok(()),
        Field::Null if null_ok => Ok(()),
        Field::Null => bail!("unsupported {key} null (supported: {})", allowed.join(", ")),
        Field::Val(v) => {
            let s = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
            if allowed.contains(&s.as_str()) {
                Ok(())
            } else {
                bail!("unsupported {key} {s:?} (supported: {})", allowed.join(", "))
            }
        }
    }
}

fn get_usize_list(m: &Map<String, Value>, key: &str, default: &[usize]) -> Result<Vec<usize>> {
    match field(m, key) {
        Field::Absent => Ok(default.to_vec()),
        Field::Null => bail!("field {key} is null; a list of integers is required"),
        Field::Val(v) => as_list(key, v)?.iter().map(|x| as_usize(key, x)).collect(),
    }
}

fn get_str_list(m: &Map<String, Value>, key: &str, default: &[&str]) -> Result<Vec<String>> {
    match field(m, key) {
        Field::Absent => Ok(default.iter().map(|s| s.to_string()).collect()),
        Field::Null => bail!("field {key} is null; a list of block types is required"),
        Field::Val(v) => as_list(key, v)?.iter().map(|x| as_str(key, x).map(str::to_string)).collect(),
    }
}

/// Parses JSON, or YAML when the text is not JSON.
pub fn parse_json_or_yaml(text: &str) -> Result<Value> {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Ok(v),
        Err(json_err) => serde_yaml::from_str::<Value>(text)
            .map_err(|yaml_err| anyhow!("neither JSON ({json_err}) nor YAML ({yaml_err})")),
    }
}

// ---------------------------------------------------------------------------------
// diffusers UNet2DModel config.json

/// Parses a diffusers `UNet2DModel` `config.json` into the normalised architecture.
/// Absent keys take diffusers' `UNet2DModel.__init__` defaults.
pub fn parse_diffusers_unet_config(text: &str) -> Result<UNetArch> {
    let v: Value = serde_json::from_str(text).context("config.json is not valid JSON")?;
    diffusers_unet_from_value(&v)
}

fn diffusers_unet_from_value(v: &Value) -> Result<UNetArch> {
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

// ---------------------------------------------------------------------------------
// The authors' config layout (configs/*.yml)

/// Parses the authors' config layout (`data` / `model` / `diffusion` sections of
/// `configs/*.yml`), as YAML or JSON text.
pub fn parse_authors_config(text: &str) -> Result<(UNetArch, Vec<f64>)> {
    let v = parse_json_or_yaml(text)?;
    authors_from_value(&v)
}

fn section<'a>(root: &'a Map<String, Value>, key: &str) -> Result<&'a Map<String, Value>> {
    root.get(key).and_then(Value::as_object).ok_or_else(|| anyhow!("missing section {key:?}"))
}

fn authors_from_value(v: &Value) -> Result<(UNetArch, Vec<f64>)> {
    let root = v.as_object().ok_or_else(|| anyhow!("the config is not a mapping"))?;
    let data = section(root, "data")?;
    let model = section(root, "model")?;
    let diffusion = section(root, "diffusion")?;

    // The authors build these datasets' models by name (diffusion_latent.py: i_DDPM for
    // FFHQ / AFHQ / IMAGENET, guided_Diffusion for MetFACE), ignoring the config's model
    // section (which still describes a DDPM U-Net).
    if let Field::Val(ds) = field(data, "dataset") {
        let adm = match ds.as_str() {
            Some("AFHQ") | Some("FFHQ") | Some("MetFACE") => Some(UNetArch::adm_p2_256()),
            Some("IMAGENET") => Some(UNetArch::adm_imagenet_256()),
            _ => None,
        };
        if let Some(arch) = adm {
            let size = get_usize(data, "image_size", Some(256)).context("section data")?;
            if size != arch.sample_size {
                bail!(
                    "data.dataset {ds} is the authors' {}x{} ADM, but data.image_size is {size}",
                    arch.sample_size,
                    arch.sample_size
                );
            }
            let betas = authors_betas(diffusion)?;
            return Ok((arch, betas));
        }
    }

    match field(model, "type") {
        Field::Val(t) if t.as_str() == Some("simple") => {}
        Field::Val(t) => bail!("unsupported model.type {} (supported: \"simple\", the DDPM U-Net)", t),
        _ => bail!("missing field model.type (expected \"simple\")"),
    }
    let image_size = get_usize(data, "image_size", None).context("section data")?;
    let in_channels = get_usize(model, "in_channels", None).context("section model")?;
    let out_ch = get_usize(model, "out_ch", None).context("section model")?;
    let ch = get_usize(model, "ch", None).context("section model")?;
    let ch_mult = get_usize_list(model, "ch_mult", &[]).context("section model")?;
    if ch_mult.is_empty() {
        bail!("missing or empty field model.ch_mult");
    }
    if ch_mult[0] != 1 {
        // The DDPM conv_in has `ch` outputs and level 0 takes `ch * in_ch_mult[0] = ch`;
        // only ch_mult[0] == 1 maps onto the diffusers layout.
        bail!("unsupported model.ch_mult {ch_mult:?}: the first multiplier must be 1");
    }
    let num_res_blocks = get_usize(model, "num_res_blocks", None).context("section model")?;
    let attn_res = get_usize_list(model, "attn_resolutions", &[]).context("section model")?;
    match field(model, "resamp_with_conv") {
        Field::Val(x) if x.as_bool() == Some(true) => {}
        Field::Absent => bail!("missing field model.resamp_with_conv (must be true)"),
        Field::Null => bail!("unsupported model.resamp_with_conv null (must be true)"),
        Field::Val(x) => bail!("unsupported model.resamp_with_conv {x} (must be true)"),
    }

    let l = ch_mult.len();
    let block_out_channels: Vec<usize> = ch_mult.iter().map(|m| m * ch).collect();
    let down_attention: Vec<bool> = (0..l).map(|i| attn_res.contains(&(image_size >> i))).collect();
    let up_attention: Vec<bool> = (0..l).map(|i| down_attention[l - 1 - i]).collect();

    let arch = UNetArch {
        sample_size: image_size,
        in_channels,
        out_channels: out_ch,
        block_out_channels,
        layers_per_block: num_res_blocks,
        down_attention,
        up_attention,
        mid_attention: true,
        attention_head_dim: None,
        norm_num_groups: 32,
        mid_attn_norm_groups: 32,
        norm_eps: 1e-6,
        downsample_padding: 0,
        flip_sin_to_cos: false,
        freq_shift: 1.0,
        time_embed_dim: 4 * ch,
        adm: None,
    };
    validate_arch(&arch).with_context(|| {
        format!(
            "model.ch {ch}, ch_mult {ch_mult:?}, data.image_size {image_size} with the DDPM \
             U-Net's GroupNorm(32)"
        )
    })?;

    let betas = authors_betas(diffusion)?;
    Ok((arch, betas))
}

/// The schedule of the authors' `diffusion` section (linear only).
fn authors_betas(diffusion: &Map<String, Value>) -> Result<Vec<f64>> {
    match field(diffusion, "beta_schedule") {
        Field::Val(x) if x.as_str() == Some("linear") => {}
        Field::Absent => bail!("missing field diffusion.beta_schedule"),
        Field::Null => bail!("unsupported diffusion.beta_schedule null (supported: linear)"),
        Field::Val(x) => bail!("unsupported diffusion.beta_schedule {x} (supported: linear)"),
    }
    let beta_start = get_f64(diffusion, "beta_start", None).context("section diffusion")?;
    let beta_end = get_f64(diffusion, "beta_end", None).context("section diffusion")?;
    let n = get_usize(diffusion, "num_diffusion_timesteps", None).context("section diffusion")?;
    let betas = linear_betas(beta_start, beta_end, n);
    validate_betas(&betas).context("section diffusion")?;
    Ok(betas)
}

// ---------------------------------------------------------------------------------
// The ADM family: guided-diffusion / improved-diffusion `create_model` flags

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
fn is_adm_config(v: &Value) -> bool {
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

fn adm_from_value(v: &Value) -> Result<(UNetArch, Vec<f64>)> {
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

// ---------------------------------------------------------------------------------
// Config files of either layout

/// Reads a `--config FILE`: the authors' layout (YAML or JSON with a `model` section)
/// or a diffusers `UNet2DModel` `config.json`.
pub fn load_config_file(path: &Path) -> Result<ModelConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    let v = parse_json_or_yaml(&text).with_context(|| format!("cannot parse config {}", path.display()))?;
    if is_adm_config(&v) {
        let (arch, betas) =
            adm_from_value(&v).with_context(|| format!("config {} (ADM create_model flags)", path.display()))?;
        return Ok(ModelConfig { arch, betas: Some(betas), source: format!("{} (ADM)", path.display()) });
    }
    let is_authors = v.get("model").map(Value::is_object).unwrap_or(false);
    let is_diffusers =
        v.get("_class_name").is_some() || v.get("block_out_channels").is_some() || v.get("down_block_types").is_some();
    if is_authors {
        let (arch, betas) =
            authors_from_value(&v).with_context(|| format!("config {} (authors' layout)", path.display()))?;
        Ok(ModelConfig { arch, betas: Some(betas), source: format!("{} (authors' layout)", path.display()) })
    } else if is_diffusers {
        let arch = diffusers_unet_from_value(&v)
            .with_context(|| format!("config {} (diffusers UNet2DModel)", path.display()))?;
        Ok(ModelConfig { arch, betas: None, source: format!("{} (diffusers UNet2DModel)", path.display()) })
    } else {
        bail!(
            "config {}: neither the authors' layout (sections data / model / diffusion), a \
             diffusers UNet2DModel config.json (block_out_channels, down_block_types, ...) nor \
             ADM create_model flags (num_channels, attention_resolutions, ...)",
            path.display()
        )
    }
}

/// Reads a diffusers `UNet2DModel` `config.json` file.
pub fn load_diffusers_unet_config(path: &Path) -> Result<UNetArch> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_diffusers_unet_config(&text).with_context(|| format!("config {}", path.display()))
}

// ---------------------------------------------------------------------------------
// Scheduler config

fn validate_betas(betas: &[f64]) -> Result<()> {
    if betas.is_empty() {
        bail!("the schedule has no timesteps");
    }
    if let Some((i, b)) = betas.iter().enumerate().find(|(_, b)| !(b.is_finite() && **b >= 0.0 && **b < 1.0)) {
        bail!("beta[{i}] = {b} is outside [0, 1)");
    }
    Ok(())
}

/// Betas from a diffusers `scheduler_config.json` (any of DDPM / DDIM / PNDM ...
/// schedulers): `trained_betas` when non-null, else `beta_schedule` linear (float64
/// linspace, as the authors), scaled_linear or squaredcos_cap_v2 over
/// `num_train_timesteps`. Absent keys take the schedulers' defaults (linear,
/// 0.0001 .. 0.02, 1000).
pub fn parse_scheduler_config(text: &str) -> Result<Vec<f64>> {
    let v: Value = serde_json::from_str(text).context("scheduler config is not valid JSON")?;
    let m = v.as_object().ok_or_else(|| anyhow!("the scheduler config is not a JSON object"))?;
    // A model trained to predict something other than the noise changes the sampler.
    check_str(m, "prediction_type", &["epsilon"], false)?;
    if get_bool(m, "rescale_betas_zero_snr", false)? {
        bail!("unsupported rescale_betas_zero_snr true");
    }
    let betas = match field(m, "trained_betas") {
        Field::Val(x) => {
            as_list("trained_betas", x)?.iter().map(|b| as_f64("trained_betas", b)).collect::<Result<Vec<f64>>>()?
        }
        Field::Absent | Field::Null => {
            let n = get_usize(m, "num_train_timesteps", Some(DDPM_STEPS))?;
            let start = get_f64(m, "beta_start", Some(DDPM_BETA_START))?;
            let end = get_f64(m, "beta_end", Some(DDPM_BETA_END))?;
            let kind = match field(m, "beta_schedule") {
                Field::Absent => "linear".to_string(),
                Field::Null => bail!("unsupported beta_schedule null"),
                Field::Val(x) => as_str("beta_schedule", x)?.to_string(),
            };
            match kind.as_str() {
                "linear" => linear_betas(start, end, n),
                "scaled_linear" => scaled_linear_betas(start, end, n),
                "squaredcos_cap_v2" => squaredcos_cap_v2_betas(n),
                other => bail!(
                    "unsupported beta_schedule {other:?} (supported: linear, scaled_linear, \
                     squaredcos_cap_v2, or trained_betas)"
                ),
            }
        }
    };
    validate_betas(&betas)?;
    Ok(betas)
}

/// Reads a `scheduler_config.json` file into a [`Schedule`].
pub fn load_scheduler_config(path: &Path) -> Result<Schedule> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let betas = parse_scheduler_config(&text).with_context(|| format!("scheduler config {}", path.display()))?;
    Ok(Schedule::from_betas(&betas))
}
