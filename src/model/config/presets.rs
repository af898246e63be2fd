//! The built-in architecture presets (`--arch NAME`).

use anyhow::{anyhow, Context, Result};

use super::ModelConfig;
use crate::model::arch::UNetArch;
use crate::model::schedule::default_betas;
use crate::model::validate::validate_arch;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid_and_unknown_names_list_the_known() {
        for name in preset_names() {
            let c = preset(name).unwrap();
            assert_eq!(c.betas.as_deref(), Some(&default_betas()[..]), "{name}");
        }
        let e = format!("{:#}", preset("nope").unwrap_err());
        assert!(preset_names().iter().all(|n| e.contains(n)), "{e}");
    }
}
