//! Model configuration: one parser per format, each in its own file — diffusers
//! `UNet2DModel` `config.json` (`diffusers.rs`), the authors' layout (`configs/*.yml`,
//! `authors.rs`), ADM `create_model` flags (`adm_flags.rs`), the noise schedule
//! (`scheduler_config.json`, `scheduler.rs`) — and the built-in presets (`presets.rs`);
//! this file tells the formats of a `--config` file apart.
//!
//! Every field that changes the maths is either honoured or refused with an error that
//! names the field and its value; fields that cannot change the maths are ignored.

mod adm_flags;
mod authors;
mod diffusers;
mod json;
mod presets;
mod scheduler;

pub use adm_flags::parse_adm_config;
pub use authors::parse_authors_config;
pub use diffusers::{load_diffusers_unet_config, parse_diffusers_unet_config};
pub use json::parse_json_or_yaml;
pub use presets::{preset, preset_names, Preset, PRESETS};
pub use scheduler::{load_scheduler_config, parse_scheduler_config};

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::model::arch::UNetArch;
use crate::model::schedule::Schedule;

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

/// Reads a `--config FILE`: the authors' layout (YAML or JSON with a `model` section)
/// or a diffusers `UNet2DModel` `config.json`.
pub fn load_config_file(path: &Path) -> Result<ModelConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    let v = parse_json_or_yaml(&text).with_context(|| format!("cannot parse config {}", path.display()))?;
    if adm_flags::is_adm_config(&v) {
        let (arch, betas) = adm_flags::adm_from_value(&v)
            .with_context(|| format!("config {} (ADM create_model flags)", path.display()))?;
        return Ok(ModelConfig { arch, betas: Some(betas), source: format!("{} (ADM)", path.display()) });
    }
    let is_authors = v.get("model").map(Value::is_object).unwrap_or(false);
    let is_diffusers =
        v.get("_class_name").is_some() || v.get("block_out_channels").is_some() || v.get("down_block_types").is_some();
    if is_authors {
        let (arch, betas) =
            authors::authors_from_value(&v).with_context(|| format!("config {} (authors' layout)", path.display()))?;
        Ok(ModelConfig { arch, betas: Some(betas), source: format!("{} (authors' layout)", path.display()) })
    } else if is_diffusers {
        let arch = diffusers::diffusers_unet_from_value(&v)
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
