//! Weight loading: diffusers folders and pipelines, single safetensors files with a
//! config or a preset, name mapping (old diffusers attention names, original DDPM
//! names) to canonical names, validation, and the model hash.
//!
//! Canonical tensor names are the diffusers `UNet2DModel` names with the new attention
//! names (`to_q`, `to_k`, `to_v`, `to_out.0`); attention projections are `[C, C]`. The
//! ADM family keeps its own names and shapes (`model/adm.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use safetensors::{Dtype, SafeTensors};

use crate::model::arch::UNetArch;
use crate::model::config::{
    load_config_file, load_diffusers_unet_config, load_scheduler_config, preset, preset_names, ModelConfig,
};
use crate::model::graph::Graph;
use crate::model::schedule::Schedule;
use crate::tensor::HostTensor;

/// A validated model: architecture, schedule and all U-Net tensors (f32, canonical
/// names).
#[derive(Clone, Debug)]
pub struct LoadedModel {
    pub arch: UNetArch,
    pub schedule: Schedule,
    pub tensors: BTreeMap<String, HostTensor>,
    /// 16 hex chars identifying weights + schedule (for the inversion cache).
    pub hash: String,
    /// Where the weights, the architecture and the schedule came from.
    pub source: String,
}

impl LoadedModel {
    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.tensors.values().map(HostTensor::numel).sum()
    }

    /// A tensor by canonical name.
    pub fn tensor(&self, name: &str) -> Result<&HostTensor> {
        self.tensors.get(name).ok_or_else(|| anyhow!("model has no tensor {name}"))
    }

    /// Seeded random weights for `arch` (uniform in +-1/sqrt(fan_in), norm scales near
    /// 1): a stand-in for a checkpoint in benchmarks and large-size device tests.
    pub fn random(arch: &UNetArch, schedule: Schedule, seed: u64) -> Self {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let mut tensors = BTreeMap::new();
        for (name, shape) in expected_tensors(arch) {
            let n: usize = shape.iter().product();
            let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
            let scale = 1.0 / (fan_in as f32).sqrt();
            let is_norm_scale = shape.len() == 1 && name.ends_with(".weight");
            let data = (0..n).map(|_| if is_norm_scale { 1.0 + 0.1 * next() } else { scale * next() }).collect();
            tensors.insert(name, HostTensor::new(shape, data));
        }
        let hash = model_hash(&tensors, &schedule);
        Self { arch: arch.clone(), schedule, tensors, hash, source: format!("random weights (seed {seed})") }
    }
}

/// Every tensor the U-Net of `arch` reads, with its stored shape, in the checkpoint's
/// module order (canonical names): the built graph's declarations.
pub fn expected_tensors(arch: &UNetArch) -> Vec<(String, Vec<usize>)> {
    Graph::build(arch).expected_tensors()
}

// ---------------------------------------------------------------------------------
// Name mapping

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
fn is_attention_projection(canonical: &str) -> bool {
    canonical.contains(".attentions.")
        && [".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight"].iter().any(|s| canonical.ends_with(s))
}

// ---------------------------------------------------------------------------------
// Reading safetensors

fn list_some(names: &[String], max: usize) -> String {
    let mut s = names.iter().take(max).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > max {
        s.push_str(&format!(", ... ({} in all)", names.len()));
    }
    s
}

/// Checks the header's framing before handing the buffer to the safetensors crate:
/// header length and every tensor's end offset must lie inside the file. This gives
/// precise messages for truncated files and keeps the crate's offset arithmetic away
/// from overflow on hostile headers.
fn precheck_header(file: &Path, bytes: &[u8]) -> Result<()> {
    let f = file.display();
    if bytes.len() < 8 {
        bail!("{f}: not a safetensors file: {} bytes, shorter than the 8-byte header length", bytes.len());
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let avail = (bytes.len() - 8) as u64;
    if n > avail {
        bail!(
            "{f}: not a safetensors file or truncated: the header claims {n} bytes but only \
             {avail} follow"
        );
    }
    let header = std::str::from_utf8(&bytes[8..8 + n as usize])
        .map_err(|_| anyhow!("{f}: bad safetensors header: not UTF-8"))?;
    let v: serde_json::Value =
        serde_json::from_str(header).map_err(|e| anyhow!("{f}: bad safetensors header: not JSON ({e})"))?;
    let m = v.as_object().ok_or_else(|| anyhow!("{f}: bad safetensors header: not a JSON object"))?;
    let data_len = avail - n;
    for (name, info) in m {
        if name == "__metadata__" {
            continue;
        }
        let end = info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|o| o.get(1))
            .and_then(|e| e.as_u64())
            .ok_or_else(|| anyhow!("{f}: bad safetensors header: tensor {name} has no data_offsets"))?;
        if end > data_len {
            bail!(
                "{f}: truncated safetensors file: tensor {name} ends at data byte {end} but the \
                 file holds only {data_len} data bytes"
            );
        }
    }
    Ok(())
}

fn describe(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::InvalidHeader | E::InvalidHeaderStart | E::InvalidHeaderDeserialization => "bad header".to_string(),
        E::HeaderTooLarge => "header too large".to_string(),
        E::HeaderTooSmall | E::InvalidHeaderLength => "bad header length".to_string(),
        E::TensorInvalidInfo => "a tensor's byte range does not match its shape and dtype".to_string(),
        E::InvalidOffset(name) => format!("tensor {name} has invalid data offsets"),
        E::MetadataIncompleteBuffer => {
            "the tensors do not cover the data exactly (truncated or padded file)".to_string()
        }
        E::ValidationOverflow => "a tensor's size overflows".to_string(),
        other => format!("{other:?}"),
    }
}

fn to_f32(file: &Path, name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => {
            data.chunks_exact(2).map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect()
        }
        Dtype::BF16 => {
            data.chunks_exact(2).map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect()
        }
        Dtype::F64 => data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect(),
        other => {
            bail!("{}: tensor {name} has unsupported dtype {other:?} (supported: F32, F16, BF16, F64)", file.display())
        }
    })
}

/// Reads a safetensors file, maps its names to canonical ones and validates it against
/// `arch`: no missing, unexpected or duplicate tensors, the right shapes, a float dtype,
/// finite values. Everything is converted to f32.
pub fn load_tensors(file: &Path, arch: &UNetArch) -> Result<BTreeMap<String, HostTensor>> {
    load_shards(file, &[file.to_path_buf()], arch)
}

/// `load_tensors` over the shards of one checkpoint (`what` names it in messages): every
/// tensor of the architecture must be in exactly one shard.
pub fn load_shards(what: &Path, files: &[PathBuf], arch: &UNetArch) -> Result<BTreeMap<String, HostTensor>> {
    let f = what.display();
    let mut all_bytes = Vec::with_capacity(files.len());
    for file in files {
        let bytes = std::fs::read(file).with_context(|| format!("cannot read weights {}", file.display()))?;
        precheck_header(file, &bytes)?;
        all_bytes.push(bytes);
    }
    let mut sts = Vec::with_capacity(files.len());
    for (file, bytes) in files.iter().zip(&all_bytes) {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| anyhow!("{}: invalid safetensors file: {}", file.display(), describe(&e)))?;
        sts.push(st);
    }

    let expected = expected_tensors(arch);
    let expected_map: BTreeMap<&str, &Vec<usize>> = expected.iter().map(|(n, s)| (n.as_str(), s)).collect();

    // Map names; detect two stored tensors landing on one canonical name.
    let mut by_canonical: BTreeMap<String, (String, safetensors::tensor::TensorView)> = BTreeMap::new();
    let mut stored: Vec<(String, safetensors::tensor::TensorView)> = sts.iter().flat_map(|st| st.tensors()).collect();
    stored.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in stored {
        let canon = canonical_name(&name, arch.levels());
        if let Some((other, _)) = by_canonical.get(&canon) {
            if *other == name {
                bail!("{f}: tensor {name} is stored twice (in two shards); both map to {canon}");
            }
            bail!("{f}: tensors {other} and {name} both map to {canon}");
        }
        by_canonical.insert(canon, (name, view));
    }

    let unexpected: Vec<String> = by_canonical
        .iter()
        .filter(|(c, _)| !expected_map.contains_key(c.as_str()))
        .map(|(c, (orig, _))| if c == orig { orig.clone() } else { format!("{orig} (as {c})") })
        .collect();
    let missing: Vec<String> =
        expected.iter().filter(|(n, _)| !by_canonical.contains_key(n)).map(|(n, _)| n.clone()).collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        let mut msg = format!("{f}: the weights do not match the architecture");
        if !missing.is_empty() {
            msg.push_str(&format!("; {} missing tensor(s): {}", missing.len(), list_some(&missing, 10)));
        }
        if !unexpected.is_empty() {
            msg.push_str(&format!("; {} unexpected tensor(s): {}", unexpected.len(), list_some(&unexpected, 10)));
        }
        bail!(msg);
    }

    // Shapes (after reshaping 1x1-conv attention projections).
    let mut wrong = Vec::new();
    let mut shapes: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (canon, (orig, view)) in &by_canonical {
        let mut shape = view.shape().to_vec();
        if is_attention_projection(canon) && shape.len() == 4 && shape[2] == 1 && shape[3] == 1 {
            shape.truncate(2);
        }
        let want = expected_map[canon.as_str()];
        if &shape != want {
            let shown = if canon == orig { canon.clone() } else { format!("{canon} (stored as {orig})") };
            wrong.push(format!("{shown}: expected {want:?}, got {:?}", view.shape()));
        }
        shapes.insert(canon.as_str(), shape);
    }
    if !wrong.is_empty() {
        bail!("{f}: {} tensor(s) with the wrong shape: {}", wrong.len(), list_some(&wrong, 10));
    }

    // Dtypes, conversion, finiteness.
    let mut out = BTreeMap::new();
    let mut non_finite = Vec::new();
    for (canon, (orig, view)) in &by_canonical {
        let data = to_f32(what, orig, view.dtype(), view.data())?;
        if data.iter().any(|x| !x.is_finite()) {
            non_finite.push(canon.clone());
        }
        let shape = shapes[canon.as_str()].clone();
        out.insert(canon.clone(), HostTensor::new(shape, data));
    }
    if !non_finite.is_empty() {
        bail!(
            "{f}: {} tensor(s) with non-finite values (NaN or inf): {}",
            non_finite.len(),
            list_some(&non_finite, 10)
        );
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// Hash

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= x as u64;
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }
    /// FNV-1a over 32-bit words (the f32 bit patterns), for speed on large tensors.
    fn words(&mut self, v: &[f32]) {
        for x in v {
            self.0 ^= x.to_bits() as u64;
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }
    fn u64(&mut self, x: u64) {
        self.bytes(&x.to_le_bytes());
    }
    fn finish(&self) -> u64 {
        // splitmix64 finaliser: every output bit depends on every state bit.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// 16 hex chars identifying the weights (canonical names, shapes and f32 values in
/// name order) and the schedule (alphas_cumprod). FNV-1a 64 with a final mix.
pub fn model_hash(tensors: &BTreeMap<String, HostTensor>, schedule: &Schedule) -> String {
    let mut h = Fnv(FNV_OFFSET);
    h.bytes(b"diffstyle-model-v1");
    h.u64(tensors.len() as u64);
    for (name, t) in tensors {
        h.u64(name.len() as u64);
        h.bytes(name.as_bytes());
        h.u64(t.shape.len() as u64);
        for &d in &t.shape {
            h.u64(d as u64);
        }
        h.words(&t.data);
    }
    h.bytes(b"schedule");
    h.u64(schedule.alphas_cumprod.len() as u64);
    h.words(&schedule.alphas_cumprod);
    format!("{:016x}", h.finish())
}

// ---------------------------------------------------------------------------------
// Entry point

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

/// Names of the tensors in `expected_tensors(arch)` as a set (convenience for tests
/// and the forward pass).
pub fn expected_names(arch: &UNetArch) -> BTreeSet<String> {
    expected_tensors(arch).into_iter().map(|(n, _)| n).collect()
}
