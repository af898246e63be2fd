//! Where a model's files are: diffusers `UNet2DModel` folders (one safetensors file
//! or shards), pipeline folders, single files with `--config` / `--arch`, and the
//! scheduler config beside them.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::checkpoint::load_shards;
use super::hash::model_hash;
use super::LoadedModel;
use crate::model::arch::UNetArch;
use crate::model::config::{
    load_config_file, load_diffusers_unet_config, load_scheduler_config, preset, preset_names, ModelConfig,
};
use crate::model::schedule::Schedule;

const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

/// The weights of a diffusers folder: `(what to name in messages, the files)`: one
/// safetensors file, or the shards an index lists.
fn weights_in(dir: &Path) -> Result<(PathBuf, Vec<PathBuf>)> {
    for name in [WEIGHTS_FILE, "diffusion_pytorch_model.fp16.safetensors"] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok((p.clone(), vec![p]));
        }
    }
    let index = dir.join("diffusion_pytorch_model.safetensors.index.json");
    if index.exists() {
        return Ok((index.clone(), shards_of(&index)?));
    }
    if dir.join("diffusion_pytorch_model.bin").exists() {
        bail!(
            "{}: only diffusion_pytorch_model.bin (a PyTorch pickle) is present; convert it to \
             {WEIGHTS_FILE} (e.g. UNet2DModel.from_pretrained(...).save_pretrained(..., \
             safe_serialization=True))",
            dir.display()
        );
    }
    bail!("{}: no {WEIGHTS_FILE} in the folder", dir.display())
}

/// The shard files a diffusers `*.safetensors.index.json` lists in its `weight_map`
/// (each a plain file name beside the index), in order of first mention.
fn shards_of(index: &Path) -> Result<Vec<PathBuf>> {
    let shown = index.display();
    let text = std::fs::read_to_string(index).with_context(|| format!("cannot read {shown}"))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow!("{shown}: not a valid JSON index ({e})"))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| anyhow!("{shown}: no \"weight_map\" object (not a safetensors shard index)"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for (tensor, file) in map {
        let name = file.as_str().ok_or_else(|| anyhow!("{shown}: the shard of {tensor} is not a file name"))?;
        ensure!(
            !name.is_empty() && Path::new(name).file_name().is_some_and(|f| f == name),
            "{shown}: shard {name:?} of {tensor} is not a plain file name beside the index"
        );
        let p = dir.join(name);
        if !files.contains(&p) {
            ensure!(p.is_file(), "{shown}: shard {} (holding {tensor}) is missing", p.display());
            files.push(p);
        }
    }
    ensure!(!files.is_empty(), "{shown}: the index lists no shards");
    Ok(files)
}

/// The schedule for a diffusers folder: the first existing scheduler config among
/// `candidates`, else the default DDPM linear schedule.
fn schedule_from(candidates: &[PathBuf]) -> Result<(Schedule, String)> {
    for c in candidates {
        if c.is_file() {
            return Ok((load_scheduler_config(c)?, format!("schedule from {}", c.display())));
        }
    }
    Ok((Schedule::ddpm_linear(), "default DDPM linear schedule 1e-4..0.02 over 1000 (no scheduler_config.json)".into()))
}

fn finish(
    arch: UNetArch,
    schedule: Schedule,
    weights: &(PathBuf, Vec<PathBuf>),
    source: String,
) -> Result<LoadedModel> {
    let tensors = load_shards(&weights.0, &weights.1, &arch)?;
    let hash = model_hash(&tensors, &schedule);
    Ok(LoadedModel { arch, schedule, tensors, hash, source })
}

/// Loads a UNet2DModel folder; the schedule comes from the first existing file in
/// `schedulers` (else the DDPM default).
fn load_unet_folder(dir: &Path, schedulers: &[PathBuf], what: &str) -> Result<LoadedModel> {
    let cfg = dir.join("config.json");
    let arch = load_diffusers_unet_config(&cfg)?;
    let weights = weights_in(dir)?;
    let (schedule, sched_src) = schedule_from(schedulers)?;
    let source = format!("{what} {} (weights {}; {sched_src})", dir.display(), weights.0.display());
    finish(arch, schedule, &weights, source)
}

fn check_model_index(dir: &Path) -> Result<()> {
    let p = dir.join("model_index.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", p.display()))?;
    let m = v.as_object().ok_or_else(|| anyhow!("{}: not a JSON object", p.display()))?;
    for latent in ["vqvae", "vae"] {
        if m.get(latent).map(|x| !x.is_null() && x != &serde_json::json!([null, null])) == Some(true) {
            bail!(
                "{}: a latent-diffusion pipeline (has a {latent}); only pixel-space U-Nets are \
                 supported",
                p.display()
            );
        }
    }
    if !m.contains_key("unet") {
        bail!("{}: the pipeline has no unet", p.display());
    }
    Ok(())
}

/// Loads a model from
/// * a diffusers `UNet2DModel` folder (`config.json` + `diffusion_pytorch_model.safetensors`;
///   betas from `scheduler_config.json` in it, or `../scheduler/scheduler_config.json`
///   when it is a pipeline's `unet/`),
/// * a diffusers pipeline folder (`model_index.json`, `unet/`, optional `scheduler/`),
/// * a single `.safetensors` file described by `config` (the authors' YAML/JSON layout,
///   or a diffusers `config.json`) or by the `preset` name.
///
/// Without a scheduler config the betas are DDPM linear 1e-4..0.02 over 1000.
pub fn load_model(path: &Path, config: Option<&Path>, preset_name: Option<&str>) -> Result<LoadedModel> {
    if !path.exists() {
        bail!("model path {} does not exist", path.display());
    }
    if path.is_dir() {
        if config.is_some() || preset_name.is_some() {
            bail!(
                "{} is a diffusers folder, which carries its own config.json; --config / --arch \
                 are only for a single .safetensors file",
                path.display()
            );
        }
        if path.join("model_index.json").is_file() {
            check_model_index(path)?;
            // diffusers loads a component from the pipeline root when its subfolder is
            // absent (the flat layout of e.g. the google/ddpm-* repositories).
            let sub = path.join("unet");
            let (unet, what) = if sub.is_dir() {
                (sub, "diffusers pipeline unet")
            } else {
                (path.to_path_buf(), "diffusers pipeline (flat layout)")
            };
            if !unet.join("config.json").is_file() {
                bail!("{}: pipeline folder without a unet config.json", path.display());
            }
            // as diffusers: the scheduler/ subfolder, else the root
            let scheds = [path.join("scheduler").join("scheduler_config.json"), path.join("scheduler_config.json")];
            return load_unet_folder(&unet, &scheds, what);
        }
        if path.join("config.json").is_file() {
            let parent_sched = path.parent().map(|p| p.join("scheduler").join("scheduler_config.json"));
            let in_pipeline = path.file_name().map(|n| n == "unet").unwrap_or(false)
                || path.parent().map(|p| p.join("model_index.json").is_file()).unwrap_or(false);
            let mut scheds = vec![path.join("scheduler_config.json")];
            if in_pipeline {
                scheds.extend(parent_sched);
            }
            return load_unet_folder(path, &scheds, "diffusers UNet2DModel folder");
        }
        bail!("{}: not a diffusers model folder (no config.json or model_index.json)", path.display());
    }

    // A single file.
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if matches!(ext.as_str(), "ckpt" | "pt" | "pth" | "bin" | "pkl") {
        bail!(
            "{}: PyTorch pickle checkpoints are not read; convert it to .safetensors \
             (safetensors.torch.save_file(torch.load(path), out))",
            path.display()
        );
    }
    let mc: ModelConfig = match (config, preset_name) {
        (Some(_), Some(_)) => bail!("pass either --config or --arch, not both"),
        (Some(c), None) => load_config_file(c)?,
        // name the weights file the unknown --arch was meant for
        (None, Some(p)) => preset(p).with_context(|| format!("architecture of {}", path.display()))?,
        (None, None) => {
            let mut msg = format!(
                "{} is a single weights file: pass --config FILE (the authors' YAML/JSON config \
                 or a diffusers config.json) or --arch NAME (one of: {})",
                path.display(),
                preset_names().join(", ")
            );
            if let Some(dir) = path.parent() {
                if dir.join("config.json").is_file() {
                    msg.push_str(&format!(
                        "; there is a config.json next to it: pass the folder {} instead",
                        dir.display()
                    ));
                }
            }
            bail!(msg)
        }
    };
    let (schedule, sched_src) = match &mc.betas {
        Some(b) => (Schedule::from_betas(b), format!("schedule from {}", mc.source)),
        None => {
            // A diffusers config.json: look for the scheduler beside it.
            let dir = config.and_then(Path::parent).unwrap_or(Path::new("."));
            schedule_from(&[
                dir.join("scheduler_config.json"),
                dir.join("..").join("scheduler").join("scheduler_config.json"),
            ])?
        }
    };
    let source = format!("{} (architecture from {}; {sched_src})", path.display(), mc.source);
    finish(mc.arch, schedule, &(path.to_path_buf(), vec![path.to_path_buf()]), source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_model_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = format!("{:#}", load_model(&dir.path().join("none"), None, None).unwrap_err());
        assert!(e.contains("does not exist"), "{e}");
        let e = format!("{:#}", load_model(dir.path(), None, None).unwrap_err());
        assert!(e.contains("not a diffusers model folder"), "{e}");
        let pickle = dir.path().join("m.ckpt");
        std::fs::write(&pickle, b"x").unwrap();
        assert!(format!("{:#}", load_model(&pickle, None, None).unwrap_err()).contains("convert it"));
        let single = dir.path().join("m.safetensors");
        std::fs::write(&single, b"x").unwrap();
        assert!(format!("{:#}", load_model(&single, None, None).unwrap_err()).contains("--arch NAME"));
        std::fs::write(dir.path().join("diffusion_pytorch_model.safetensors.index.json"), "{}").unwrap();
        assert!(format!("{:#}", weights_in(dir.path()).unwrap_err()).contains("weight_map"));
    }
}
