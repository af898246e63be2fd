//! The authors' config layout (`configs/*.yml` of InjectFusion, as YAML or JSON): the
//! `data` / `model` / `diffusion` sections.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};

use super::json::*;
use crate::model::arch::UNetArch;
use crate::model::schedule::{linear_betas, validate_betas};
use crate::model::validate::validate_arch;

/// Parses the authors' config layout (`data` / `model` / `diffusion` sections of
/// `configs/*.yml`), as YAML or JSON text.
pub fn parse_authors_config(text: &str) -> Result<(UNetArch, Vec<f64>)> {
    let v = parse_json_or_yaml(text)?;
    authors_from_value(&v)
}

fn section<'a>(root: &'a Map<String, Value>, key: &str) -> Result<&'a Map<String, Value>> {
    root.get(key).and_then(Value::as_object).ok_or_else(|| anyhow!("missing section {key:?}"))
}

pub(super) fn authors_from_value(v: &Value) -> Result<(UNetArch, Vec<f64>)> {
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

    // The original DDPM `Model`'s fixed choices (one head, GroupNorm(32, 1e-6), padded
    // stride-2 downsampling, sin-first sinusoids with shift 1) are ddpm_256's.
    let arch = UNetArch {
        sample_size: image_size,
        in_channels,
        out_channels: out_ch,
        block_out_channels,
        layers_per_block: num_res_blocks,
        down_attention,
        up_attention,
        time_embed_dim: 4 * ch,
        ..UNetArch::ddpm_256()
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

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = "data: {dataset: CelebA_HQ, image_size: 32}\nmodel: {type: simple, in_channels: 3, \
                        out_ch: 3, ch: 32, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [16], \
                        resamp_with_conv: true}\ndiffusion: {beta_schedule: linear, beta_start: 0.0001, \
                        beta_end: 0.02, num_diffusion_timesteps: 1000}\n";

    #[test]
    fn reads_the_ddpm_layout() {
        let (arch, betas) = parse_authors_config(TINY).unwrap();
        assert_eq!(arch.block_out_channels, vec![32, 64]);
        assert_eq!((arch.down_attention.clone(), arch.up_attention.clone()), (vec![false, true], vec![true, false]));
        assert_eq!((arch.time_embed_dim, arch.norm_eps, arch.adm.is_none()), (128, 1e-6, true));
        assert_eq!(betas, crate::model::schedule::default_betas());
    }

    #[test]
    fn builds_the_adm_by_dataset_and_refuses_by_field() {
        let afhq = TINY.replace("CelebA_HQ, image_size: 32", "AFHQ, image_size: 256");
        assert_eq!(parse_authors_config(&afhq).unwrap().0, UNetArch::adm_p2_256());
        let e = parse_authors_config(&TINY.replace("type: simple", "type: other")).unwrap_err();
        assert!(format!("{e:#}").contains("model.type"), "{e:#}");
        let e = parse_authors_config(&TINY.replace("beta_schedule: linear", "beta_schedule: quad")).unwrap_err();
        assert!(format!("{e:#}").contains("diffusion.beta_schedule"), "{e:#}");
    }
}
