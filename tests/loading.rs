//! Configuration parsing, weight loading, name mapping, validation and the noise
//! schedule. Reference values were computed with numpy / torch / diffusers 0.42.1 when
//! these tests were written and are embedded as constants; nothing Python runs here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use diffstyle::diffusion::timesteps::seq;
use diffstyle::model::arch::UNetArch;
use diffstyle::model::config::{
    parse_authors_config, parse_diffusers_unet_config, parse_scheduler_config, preset, preset_names,
};
use diffstyle::model::schedule::{default_betas, linear_betas, scaled_linear_betas, squaredcos_cap_v2_betas, Schedule};
use diffstyle::model::validate::validate_arch;
use diffstyle::model::weights::{canonical_name, expected_tensors, load_model, LoadedModel};
use safetensors::tensor::{serialize_to_file, TensorView};
use safetensors::Dtype;

// ---------------------------------------------------------------------------------
// Helpers

fn fnv(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Deterministic pseudo-random values in [-1, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Random canonical tensors for `arch`.
fn random_weights(arch: &UNetArch, seed: u64) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut rng = Rng(seed | 1);
    expected_tensors(arch)
        .into_iter()
        .map(|(n, s)| {
            let len = s.iter().product();
            let v = (0..len).map(|_| rng.next()).collect();
            (n, (s, v))
        })
        .collect()
}

struct Stored {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn stored_f32(name: &str, shape: &[usize], v: &[f32]) -> Stored {
    Stored { name: name.to_string(), dtype: Dtype::F32, shape: shape.to_vec(), bytes: f32_bytes(v) }
}

fn write_st(path: &Path, ts: &[Stored]) {
    let views: Vec<(String, TensorView)> =
        ts.iter().map(|t| (t.name.clone(), TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap())).collect();
    serialize_to_file(views, &None, path).unwrap();
}

fn write_weights(path: &Path, w: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) {
    let ts: Vec<Stored> = w.iter().map(|(n, (s, v))| stored_f32(n, s, v)).collect();
    write_st(path, &ts);
}

fn assert_same_values(m: &LoadedModel, w: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) {
    assert_eq!(m.tensors.len(), w.len());
    for (n, (s, v)) in w {
        let t = &m.tensors[n];
        assert_eq!(&t.shape, s, "{n}");
        assert_eq!(&t.data, v, "{n}");
    }
}

fn err_text<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

fn assert_err_contains<T: std::fmt::Debug>(r: anyhow::Result<T>, needles: &[&str]) {
    let e = err_text(r);
    for n in needles {
        assert!(e.contains(n), "error {e:?} does not mention {n:?}");
    }
}

/// A small diffusers UNet2DModel config exercising most fields.
const TINY_CONFIG: &str = r#"{
  "_class_name": "UNet2DModel",
  "_diffusers_version": "0.42.1",
  "act_fn": "silu",
  "add_attention": true,
  "attention_head_dim": 4,
  "attn_norm_num_groups": 2,
  "block_out_channels": [8, 16, 24],
  "center_input_sample": false,
  "class_embed_type": null,
  "down_block_types": ["AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
  "downsample_padding": 1,
  "downsample_type": "conv",
  "dropout": 0.0,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 3,
  "layers_per_block": 1,
  "mid_block_scale_factor": 1,
  "mid_block_type": "UNetMidBlock2D",
  "norm_eps": 1e-05,
  "norm_num_groups": 4,
  "num_class_embeds": null,
  "num_train_timesteps": null,
  "out_channels": 6,
  "resnet_time_scale_shift": "default",
  "sample_size": 16,
  "time_embedding_dim": 20,
  "time_embedding_type": "positional",
  "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"],
  "upsample_type": "conv"
}"#;

fn tiny_arch() -> UNetArch {
    parse_diffusers_unet_config(TINY_CONFIG).unwrap()
}

/// TINY_CONFIG with one field replaced (or removed, for `None`).
fn tiny_with(key: &str, value: Option<serde_json::Value>) -> String {
    let mut v: serde_json::Value = serde_json::from_str(TINY_CONFIG).unwrap();
    let m = v.as_object_mut().unwrap();
    match value {
        Some(x) => {
            m.insert(key.to_string(), x);
        }
        None => {
            m.remove(key);
        }
    }
    serde_json::to_string(&v).unwrap()
}

fn diffusers_folder(dir: &Path, config: &str, w: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    write_weights(&dir.join("diffusion_pytorch_model.safetensors"), w);
}

const SCHED_SCALED: &str = r#"{"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear",
  "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000, "trained_betas": null,
  "clip_sample": false, "prediction_type": "epsilon"}"#;

fn bits32(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

const IDX: [usize; 11] = [0, 1, 2, 10, 100, 250, 499, 500, 750, 998, 999];

// ---------------------------------------------------------------------------------
// Schedule and time sequence

#[test]
fn seq_matches_numpy() {
    // (n, sum, sum of (k+1)*v, FNV-1a of the i64 LE bytes), from
    // [int(s + 1e-6) for s in numpy.linspace(0, 1, n) * 999] (numpy 2.4).
    let cases: [(usize, i64, i64, u64); 10] = [
        (2, 999, 1998, 0x0920e96d18cf5e87),
        (3, 1498, 3995, 0xfca0513d96745e1b),
        (7, 3495, 18642, 0x5b3ebcfda77bb9ee),
        (40, 19962, 545751, 0x7f191cc0c015bb9b),
        (50, 24951, 848542, 0xde88b458d29ef14d),
        (99, 49402, 3294279, 0x0212ef96802cb411),
        (100, 49905, 3360960, 0xe187729d24ea61f6),
        (101, 50400, 3428850, 0x56d41bb6728d13c3),
        (333, 166168, 37006290, 0x01a08ec5b24b3c0b),
        (1000, 499500, 333333000, 0x3a840aab2742da95),
    ];
    for (n, sum, wsum, hash) in cases {
        let s = seq(n);
        assert_eq!(s.len(), n);
        assert_eq!(s.iter().sum::<i64>(), sum, "n = {n}");
        let w: i64 = s.iter().enumerate().map(|(k, v)| (k as i64 + 1) * v).sum();
        assert_eq!(w, wsum, "n = {n}");
        let bytes: Vec<u8> = s.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(fnv(&bytes), hash, "n = {n}");
        assert_eq!(s[0], 0);
        assert_eq!(*s.last().unwrap(), 999);
    }
    assert_eq!(seq(7), vec![0, 166, 333, 499, 666, 832, 999]);
    assert_eq!(
        seq(40),
        vec![
            0, 25, 51, 76, 102, 128, 153, 179, 204, 230, 256, 281, 307, 333, 358, 384, 409, 435, 461, 486, 512, 537,
            563, 589, 614, 640, 666, 691, 717, 742, 768, 794, 819, 845, 870, 896, 922, 947, 973, 999
        ]
    );
    assert_eq!(
        seq(50),
        vec![
            0, 20, 40, 61, 81, 101, 122, 142, 163, 183, 203, 224, 244, 265, 285, 305, 326, 346, 366, 387, 407, 428,
            448, 468, 489, 509, 530, 550, 570, 591, 611, 632, 652, 672, 693, 713, 733, 754, 774, 795, 815, 835, 856,
            876, 897, 917, 937, 958, 978, 999
        ]
    );
    assert_eq!(&seq(101)[..4], &[0, 9, 19, 29]);
    assert_eq!(&seq(333)[330..], &[992, 995, 999]);
}

#[test]
fn linear_betas_bit_exact_with_numpy() {
    // numpy.linspace(1e-4, 0.02, 7, dtype=float64)
    let b7: Vec<u64> = linear_betas(1e-4, 0.02, 7).iter().map(|x| x.to_bits()).collect();
    assert_eq!(
        b7,
        vec![
            0x3f1a36e2eb1c432d,
            0x3f6bfd44f3078264,
            0x3f7b9469675b1158,
            0x3f8495182a9930be,
            0x3f8b5ffba184d8d1,
            0x3f91156f8c384072,
            0x3f947ae147ae147b
        ]
    );
    let b = linear_betas(0.0001, 0.028, 333);
    let got: Vec<u64> = [1, 77, 200, 331].iter().map(|&i| b[i].to_bits()).collect();
    assert_eq!(got, vec![0x3f281f3a71ca3305, 0x3f7ae9f72a9cfaff, 0x3f915020ed08f780, 0x3f9c96009f2e7157]);
    let b = linear_betas(1e-4, 0.02, 1000);
    let got: Vec<u64> = IDX.iter().map(|&i| b[i].to_bits()).collect();
    assert_eq!(
        got,
        vec![
            0x3f1a36e2eb1c432d,
            0x3f1f6fb0896a69ac,
            0x3f22543f13dc4815,
            0x3f339bbac68a7107,
            0x3f612339a60d1a64,
            0x3f74cebebe0db76b,
            0x3f848fdf5cfae297,
            0x3f849a50f8377ee4,
            0x3f8ecd4291682213,
            0x3f9475a87a0fc654,
            0x3f947ae147ae147b
        ]
    );
}

#[test]
fn ddpm_alphas_cumprod_match_reference() {
    // numpy: b = linspace(1e-4, 0.02, 1000); cumprod(float32(1) - b.astype(float32))
    // (sequential f32). The authors' torch CPU cumprod accumulates in double; it differs
    // by <= 7e-7 relative.
    let s = Schedule::from_betas(&default_betas());
    assert_eq!(s.len(), 1000);
    let got: Vec<u32> = IDX.iter().map(|&i| s.alphas_cumprod[i].to_bits()).collect();
    assert_eq!(
        got,
        vec![
            0x3f7ff972, 0x3f7ff196, 0x3f7fe86d, 0x3f7f7040, 0x3f6527f8, 0x3f057bfa, 0x3da0f259, 0x3d9f53db, 0x3b58477d,
            0x382cbacc, 0x3829466c
        ]
    );
    assert_eq!(s.alpha_bar(-1), 1.0);
    assert_eq!(s.alpha_bar(999), f32::from_bits(0x3829466c));
    assert_eq!(Schedule::ddpm_linear(), s);
    // a few values in decimal, for the reader
    assert!((s.alpha_bar(0) - 0.9999).abs() < 1e-7);
    assert!((s.alpha_bar(500) - 0.077_796_66).abs() < 1e-7);
}

#[test]
fn scheduler_configs_of_all_kinds() {
    // linear (explicit and by defaults)
    let lin = r#"{"_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear",
      "beta_start": 0.0001, "clip_sample": true, "num_train_timesteps": 1000,
      "trained_betas": null, "variance_type": "fixed_small"}"#;
    assert_eq!(parse_scheduler_config(lin).unwrap(), default_betas());
    assert_eq!(parse_scheduler_config("{}").unwrap(), default_betas());

    // scaled_linear: numpy linspace(sqrt(0.00085), sqrt(0.012), 1000) ** 2
    let b = parse_scheduler_config(SCHED_SCALED).unwrap();
    assert_eq!(b, scaled_linear_betas(0.00085, 0.012, 1000));
    let got: Vec<u64> = IDX.iter().map(|&i| b[i].to_bits()).collect();
    assert_eq!(
        got,
        vec![
            0x3f4bda5119ce075f,
            0x3f4c01bb62ee78e6,
            0x3f4c29417be5ee48,
            0x3f4d695b7dde2400,
            0x3f56accd38ff6caa,
            0x3f63e362471d0ae2,
            0x3f73ad245bf8b537,
            0x3f73b8d8692053a6,
            0x3f80685ff9f795c4,
            0x3f888a3753d4e7a6,
            0x3f889374bc6a7efa
        ]
    );
    let s = Schedule::from_betas(&b);
    let got: Vec<u32> = IDX.iter().map(|&i| s.alphas_cumprod[i].to_bits()).collect();
    assert_eq!(
        got,
        vec![
            0x3f7fc84b, 0x3f7f9054, 0x3f7f581a, 0x3f7d8ce8, 0x3f64ebd0, 0x3f2c7daa, 0x3e8e2ab2, 0x3e8d7b75, 0x3d661244,
            0x3b9a8e76, 0x3b98b3aa
        ]
    );

    // squaredcos_cap_v2 (diffusers betas_for_alpha_bar; identical to diffusers' f32 betas)
    let cos = r#"{"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 1000}"#;
    let b = parse_scheduler_config(cos).unwrap();
    assert_eq!(b, squaredcos_cap_v2_betas(1000));
    let got: Vec<u64> = IDX.iter().map(|&i| b[i].to_bits()).collect();
    assert_eq!(
        got,
        vec![
            0x3f05a51329e24000,
            0x3f08310a8d478000,
            0x3f0abd08d4b5c000,
            0x3f178f2a4015a000,
            0x3f416de4bd3f4000,
            0x3f55bec7de946600,
            0x3f69c566cf424600,
            0x3f69d9f6f1364500,
            0x3f7f0b493ef38780,
            0x3fe7fffeba10f6fe,
            0x3feff7ced916872b
        ]
    );
    let s = Schedule::from_betas(&b);
    let got: Vec<u32> = IDX.iter().map(|&i| s.alphas_cumprod[i].to_bits()).collect();
    assert_eq!(
        got,
        vec![
            0x3f7ffd4b, 0x3f7ffa45, 0x3f7ff6ed, 0x3f7fd0bc, 0x3f78b92b, 0x3f588c19, 0x3efcd901, 0x3efc0cbd, 0x3e129d66,
            0x3622fdda, 0x3126e6b9
        ]
    );

    // trained_betas override everything else
    let tb = r#"{"beta_schedule": "linear", "trained_betas": [0.1, 0.2, 0.3]}"#;
    let s = Schedule::from_betas(&parse_scheduler_config(tb).unwrap());
    assert_eq!(bits32(&s.alphas_cumprod), vec![0x3f666666, 0x3f3851eb, 0x3f010624]);

    // refusals
    assert_err_contains(parse_scheduler_config(r#"{"beta_schedule": "sigmoid"}"#), &["beta_schedule", "sigmoid"]);
    assert_err_contains(
        parse_scheduler_config(r#"{"prediction_type": "v_prediction"}"#),
        &["prediction_type", "v_prediction"],
    );
    assert_err_contains(parse_scheduler_config(r#"{"rescale_betas_zero_snr": true}"#), &["rescale_betas_zero_snr"]);
    assert_err_contains(parse_scheduler_config(r#"{"trained_betas": [0.1, 1.5]}"#), &["beta[1]"]);
}

// ---------------------------------------------------------------------------------
// Configs and the expected tensor list

/// (config.json, number of tensors, parameters, FNV-1a of the sorted "name:[shape]"
/// lines joined by '\n') from `UNet2DModel(**config).state_dict()`, diffusers 0.42.1.
const DIFFUSERS_LAYOUTS: [(&str, usize, usize, u64); 4] = [
    (
        r#"{"sample_size": 256, "block_out_channels": [128, 128, 256, 256, 512, 512], "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"], "attention_head_dim": null, "downsample_padding": 0, "flip_sin_to_cos": false, "freq_shift": 1, "norm_eps": 1e-06}"#,
        450,
        113673219,
        0xcd09a5c8c01e3421,
    ),
    (
        r#"{"sample_size": 16, "in_channels": 3, "out_channels": 6, "block_out_channels": [8, 16, 24], "layers_per_block": 1, "down_block_types": ["AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"], "attention_head_dim": 4, "norm_num_groups": 4, "attn_norm_num_groups": 2, "time_embedding_dim": 20}"#,
        214,
        113078,
        0xdbdb974153952fd4,
    ),
    (
        r#"{"sample_size": 8, "block_out_channels": [16, 16], "layers_per_block": 3, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": null, "norm_num_groups": 8, "add_attention": false}"#,
        260,
        133459,
        0x4fed047150c24564,
    ),
    (
        r#"{"sample_size": 32, "block_out_channels": [4, 8, 8, 16], "layers_per_block": 2, "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"], "norm_num_groups": 4, "attention_head_dim": 8}"#,
        280,
        68043,
        0xdf89d3a3a0965c58,
    ),
];

#[test]
fn expected_tensors_match_diffusers_state_dicts() {
    for (cfg, count, params, hash) in DIFFUSERS_LAYOUTS {
        let arch = parse_diffusers_unet_config(cfg).unwrap();
        let list = expected_tensors(&arch);
        let mut lines: Vec<String> = list.iter().map(|(n, s)| format!("{n}:{s:?}")).collect();
        lines.sort();
        assert_eq!(lines.len(), count, "{cfg}");
        let p: usize = list.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(p, params, "{cfg}");
        assert_eq!(fnv(lines.join("\n").as_bytes()), hash, "{cfg}");
    }
    // The first layout is google/ddpm-*-256 = the preset.
    let arch = parse_diffusers_unet_config(DIFFUSERS_LAYOUTS[0].0).unwrap();
    assert_eq!(arch, UNetArch::ddpm_256());
}

#[test]
fn diffusers_defaults_and_nulls() {
    let a = tiny_arch();
    assert_eq!(a.attention_head_dim, Some(4));
    assert_eq!(a.mid_attn_norm_groups, 2);
    assert_eq!(a.time_embed_dim, 20);
    assert_eq!(a.down_attention, vec![true, false, true]);
    assert_eq!(a.up_attention, vec![true, false, true]);
    assert_eq!(a.norm_eps, 1e-5);
    assert_eq!(a.downsample_padding, 1);
    assert!(a.flip_sin_to_cos);
    assert_eq!(a.freq_shift, 0.0);
    // attention_head_dim absent -> diffusers' default 8; null -> one head
    let cfg = tiny_with("attention_head_dim", None);
    let cfg2: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    let mut m = cfg2.as_object().unwrap().clone();
    m.insert("block_out_channels".into(), serde_json::json!([8, 16, 32]));
    m.insert("norm_num_groups".into(), serde_json::json!(8));
    let a = parse_diffusers_unet_config(&serde_json::Value::Object(m).to_string()).unwrap();
    assert_eq!(a.attention_head_dim, Some(8));
    let a = parse_diffusers_unet_config(&tiny_with("attention_head_dim", Some(serde_json::Value::Null))).unwrap();
    assert_eq!(a.attention_head_dim, None);
    assert_eq!(a.heads(24, false), 1);
    // attn_norm_num_groups null -> norm_num_groups; time_embedding_dim null -> 4 * C0
    let a = parse_diffusers_unet_config(&tiny_with("attn_norm_num_groups", Some(serde_json::Value::Null))).unwrap();
    assert_eq!(a.mid_attn_norm_groups, 4);
    let a = parse_diffusers_unet_config(&tiny_with("time_embedding_dim", None)).unwrap();
    assert_eq!(a.time_embed_dim, 32);
    // sample_size as [h, w]; "UNetRes" prefix as diffusers strips it
    let a = parse_diffusers_unet_config(&tiny_with("sample_size", Some(serde_json::json!([16, 16])))).unwrap();
    assert_eq!(a.sample_size, 16);
    let a = parse_diffusers_unet_config(&tiny_with(
        "down_block_types",
        Some(serde_json::json!(["UNetResAttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"])),
    ))
    .unwrap();
    assert_eq!(a.down_attention, vec![true, false, true]);
    // act_fn "swish" is SiLU in diffusers; null downsample_type means conv
    parse_diffusers_unet_config(&tiny_with("act_fn", Some(serde_json::json!("swish")))).unwrap();
    parse_diffusers_unet_config(&tiny_with("downsample_type", Some(serde_json::Value::Null))).unwrap();
    // add_attention false removes the middle attention only
    let a = parse_diffusers_unet_config(&tiny_with("add_attention", Some(serde_json::json!(false)))).unwrap();
    assert!(!a.mid_attention);
    assert!(!expected_tensors(&a).iter().any(|(n, _)| n.starts_with("mid_block.attentions")));
}

#[test]
fn diffusers_config_refusals_name_the_field() {
    use serde_json::json;
    let cases: Vec<(&str, Option<serde_json::Value>, Vec<&str>)> = vec![
        ("_class_name", Some(json!("UNet2DConditionModel")), vec!["_class_name", "UNet2DConditionModel"]),
        ("act_fn", Some(json!("gelu")), vec!["act_fn", "gelu"]),
        ("time_embedding_type", Some(json!("fourier")), vec!["time_embedding_type", "fourier"]),
        ("resnet_time_scale_shift", Some(json!("scale_shift")), vec!["resnet_time_scale_shift", "scale_shift"]),
        ("center_input_sample", Some(json!(true)), vec!["center_input_sample"]),
        ("class_embed_type", Some(json!("timestep")), vec!["class_embed_type", "timestep"]),
        ("num_class_embeds", Some(json!(10)), vec!["num_class_embeds", "10"]),
        ("downsample_type", Some(json!("resnet")), vec!["downsample_type", "resnet"]),
        ("upsample_type", Some(json!("resnet")), vec!["upsample_type", "resnet"]),
        ("mid_block_type", Some(serde_json::Value::Null), vec!["mid_block_type", "null"]),
        ("mid_block_type", Some(json!("UNetMidBlock2DCrossAttn")), vec!["mid_block_type", "UNetMidBlock2DCrossAttn"]),
        ("mid_block_scale_factor", Some(json!(1.414)), vec!["mid_block_scale_factor", "1.414"]),
        (
            "down_block_types",
            Some(json!(["AttnDownBlock2D", "SkipDownBlock2D", "AttnDownBlock2D"])),
            vec!["down_block_types", "SkipDownBlock2D"],
        ),
        (
            "up_block_types",
            Some(json!(["AttnUpBlock2D", "CrossAttnUpBlock2D", "AttnUpBlock2D"])),
            vec!["up_block_types", "CrossAttnUpBlock2D"],
        ),
        ("up_block_types", Some(json!(["AttnUpBlock2D", "UpBlock2D"])), vec!["up_block_types", "mismatched"]),
        ("block_out_channels", Some(json!([8, 16])), vec!["block_out_channels", "mismatched"]),
        ("norm_num_groups", Some(json!(3)), vec!["norm_num_groups", "3"]),
        ("attn_norm_num_groups", Some(json!(5)), vec!["attn_norm_num_groups", "5", "mid_block.attentions.0"]),
        ("attention_head_dim", Some(json!(3)), vec!["attention_head_dim", "3"]),
        ("downsample_padding", Some(json!(2)), vec!["downsample_padding", "2"]),
        ("sample_size", Some(json!([16, 8])), vec!["sample_size"]),
        ("sample_size", Some(json!(18)), vec!["sample_size", "18"]),
        ("sample_size", None, vec!["sample_size"]),
        ("layers_per_block", Some(json!(-1)), vec!["layers_per_block"]),
    ];
    for (key, value, needles) in cases {
        let cfg = tiny_with(key, value.clone());
        let r = parse_diffusers_unet_config(&cfg);
        let e = err_text(r);
        for n in needles {
            assert!(e.contains(n), "{key} = {value:?}: error {e:?} does not mention {n:?}");
        }
    }
    let mut v: serde_json::Value = serde_json::from_str(&tiny_with("attention_head_dim", None)).unwrap();
    v["block_out_channels"] = serde_json::json!([8, 16, 20]);
    let e = err_text(parse_diffusers_unet_config(&v.to_string()));
    assert!(e.contains("diffusers' default 8"), "{e}");
    // Harmless fields are ignored.
    let a = parse_diffusers_unet_config(&tiny_with("dropout", Some(serde_json::json!(0.1)))).unwrap();
    assert_eq!(a, tiny_arch());
    let a = parse_diffusers_unet_config(&tiny_with("num_train_timesteps", Some(serde_json::json!(1000)))).unwrap();
    assert_eq!(a, tiny_arch());
}

/// `configs/celeba.yml` of the authors' repository, verbatim.
const CELEBA_YML: &str = r#"data:
    dataset: "CelebA_HQ"
    category: "CelebA_HQ"
    image_size: 256
    channels: 3
    logit_transform: false
    uniform_dequantization: false
    gaussian_dequantization: false
    random_flip: true
    rescaled: true
    num_workers: 0

model:
    type: "simple"
    in_channels: 3
    out_ch: 3
    ch: 128
    ch_mult: [1, 1, 2, 2, 4, 4]
    num_res_blocks: 2
    attn_resolutions: [16, ]
    dropout: 0.0
    var_type: fixedsmall
    ema_rate: 0.999
    ema: True
    resamp_with_conv: True

diffusion:
    beta_schedule: linear
    beta_start: 0.0001
    beta_end: 0.02
    num_diffusion_timesteps: 1000

sampling:
    batch_size: 4
    last_only: True"#;

#[test]
fn authors_yaml_is_the_ddpm_256_preset() {
    let (arch, betas) = parse_authors_config(CELEBA_YML).unwrap();
    assert_eq!(arch, UNetArch::ddpm_256());
    assert_eq!(betas, default_betas());
    let p = preset("ddpm-256").unwrap();
    assert_eq!(p.arch, arch);
    assert_eq!(p.betas.as_deref(), Some(&betas[..]));
    assert!(preset_names().contains(&"ddpm-256"));
    assert_err_contains(preset("adm-256"), &["adm-256", "ddpm-256"]);
    validate_arch(&arch).unwrap();

    // refusals in the authors' layout
    let bad = [
        ("type: \"simple\"", "type: \"guided\"", vec!["model.type", "guided"]),
        ("beta_schedule: linear", "beta_schedule: quad", vec!["beta_schedule", "quad"]),
        ("resamp_with_conv: True", "resamp_with_conv: False", vec!["resamp_with_conv", "false"]),
        ("ch_mult: [1, 1, 2, 2, 4, 4]", "ch_mult: [2, 2, 4]", vec!["ch_mult"]),
        ("ch: 128", "ch: 100", vec!["norm_num_groups", "32"]),
        ("image_size: 256", "image_size: 250", vec!["sample_size", "250"]),
    ];
    for (from, to, needles) in bad {
        let text = CELEBA_YML.replace(from, to);
        assert_ne!(text, CELEBA_YML);
        let e = err_text(parse_authors_config(&text));
        for n in needles {
            assert!(e.contains(n), "{to}: error {e:?} does not mention {n:?}");
        }
    }
    assert_err_contains(parse_authors_config("data: {image_size: 16}\nmodel: {}\n"), &["diffusion"]);
}

#[test]
fn authors_attention_levels() {
    // attention at level i iff image_size >> i is listed; up block i <-> level L-1-i
    let text = CELEBA_YML.replace("attn_resolutions: [16, ]", "attn_resolutions: [128, 16, 8]");
    let (arch, _) = parse_authors_config(&text).unwrap();
    assert_eq!(arch.down_attention, vec![false, true, false, false, true, true]);
    assert_eq!(arch.up_attention, vec![true, true, false, false, true, false]);
    assert!(arch.mid_attention);
}

// ---------------------------------------------------------------------------------
// Name mapping

/// Names and shapes of the authors' DDPM `Model` (models/ddpm/diffusion.py) state_dict
/// for image_size 16, ch 32, ch_mult [1, 2], num_res_blocks 1, attn_resolutions [8],
/// produced with their code (torch) when these tests were written.
const AUTHORS_DDPM_TINY: &str = "\
conv_in.bias 32
conv_in.weight 32 3 3 3
conv_out.bias 3
conv_out.weight 3 32 3 3
down.0.block.0.conv1.bias 32
down.0.block.0.conv1.weight 32 32 3 3
down.0.block.0.conv2.bias 32
down.0.block.0.conv2.weight 32 32 3 3
down.0.block.0.norm1.bias 32
down.0.block.0.norm1.weight 32
down.0.block.0.norm2.bias 32
down.0.block.0.norm2.weight 32
down.0.block.0.temb_proj.bias 32
down.0.block.0.temb_proj.weight 32 128
down.0.downsample.conv.bias 32
down.0.downsample.conv.weight 32 32 3 3
down.1.attn.0.k.bias 64
down.1.attn.0.k.weight 64 64 1 1
down.1.attn.0.norm.bias 64
down.1.attn.0.norm.weight 64
down.1.attn.0.proj_out.bias 64
down.1.attn.0.proj_out.weight 64 64 1 1
down.1.attn.0.q.bias 64
down.1.attn.0.q.weight 64 64 1 1
down.1.attn.0.v.bias 64
down.1.attn.0.v.weight 64 64 1 1
down.1.block.0.conv1.bias 64
down.1.block.0.conv1.weight 64 32 3 3
down.1.block.0.conv2.bias 64
down.1.block.0.conv2.weight 64 64 3 3
down.1.block.0.nin_shortcut.bias 64
down.1.block.0.nin_shortcut.weight 64 32 1 1
down.1.block.0.norm1.bias 32
down.1.block.0.norm1.weight 32
down.1.block.0.norm2.bias 64
down.1.block.0.norm2.weight 64
down.1.block.0.temb_proj.bias 64
down.1.block.0.temb_proj.weight 64 128
mid.attn_1.k.bias 64
mid.attn_1.k.weight 64 64 1 1
mid.attn_1.norm.bias 64
mid.attn_1.norm.weight 64
mid.attn_1.proj_out.bias 64
mid.attn_1.proj_out.weight 64 64 1 1
mid.attn_1.q.bias 64
mid.attn_1.q.weight 64 64 1 1
mid.attn_1.v.bias 64
mid.attn_1.v.weight 64 64 1 1
mid.block_1.conv1.bias 64
mid.block_1.conv1.weight 64 64 3 3
mid.block_1.conv2.bias 64
mid.block_1.conv2.weight 64 64 3 3
mid.block_1.norm1.bias 64
mid.block_1.norm1.weight 64
mid.block_1.norm2.bias 64
mid.block_1.norm2.weight 64
mid.block_1.temb_proj.bias 64
mid.block_1.temb_proj.weight 64 128
mid.block_2.conv1.bias 64
mid.block_2.conv1.weight 64 64 3 3
mid.block_2.conv2.bias 64
mid.block_2.conv2.weight 64 64 3 3
mid.block_2.norm1.bias 64
mid.block_2.norm1.weight 64
mid.block_2.norm2.bias 64
mid.block_2.norm2.weight 64
mid.block_2.temb_proj.bias 64
mid.block_2.temb_proj.weight 64 128
norm_out.bias 32
norm_out.weight 32
temb.dense.0.bias 128
temb.dense.0.weight 128 32
temb.dense.1.bias 128
temb.dense.1.weight 128 128
up.0.block.0.conv1.bias 32
up.0.block.0.conv1.weight 32 96 3 3
up.0.block.0.conv2.bias 32
up.0.block.0.conv2.weight 32 32 3 3
up.0.block.0.nin_shortcut.bias 32
up.0.block.0.nin_shortcut.weight 32 96 1 1
up.0.block.0.norm1.bias 96
up.0.block.0.norm1.weight 96
up.0.block.0.norm2.bias 32
up.0.block.0.norm2.weight 32
up.0.block.0.temb_proj.bias 32
up.0.block.0.temb_proj.weight 32 128
up.0.block.1.conv1.bias 32
up.0.block.1.conv1.weight 32 64 3 3
up.0.block.1.conv2.bias 32
up.0.block.1.conv2.weight 32 32 3 3
up.0.block.1.nin_shortcut.bias 32
up.0.block.1.nin_shortcut.weight 32 64 1 1
up.0.block.1.norm1.bias 64
up.0.block.1.norm1.weight 64
up.0.block.1.norm2.bias 32
up.0.block.1.norm2.weight 32
up.0.block.1.temb_proj.bias 32
up.0.block.1.temb_proj.weight 32 128
up.1.attn.0.k.bias 64
up.1.attn.0.k.weight 64 64 1 1
up.1.attn.0.norm.bias 64
up.1.attn.0.norm.weight 64
up.1.attn.0.proj_out.bias 64
up.1.attn.0.proj_out.weight 64 64 1 1
up.1.attn.0.q.bias 64
up.1.attn.0.q.weight 64 64 1 1
up.1.attn.0.v.bias 64
up.1.attn.0.v.weight 64 64 1 1
up.1.attn.1.k.bias 64
up.1.attn.1.k.weight 64 64 1 1
up.1.attn.1.norm.bias 64
up.1.attn.1.norm.weight 64
up.1.attn.1.proj_out.bias 64
up.1.attn.1.proj_out.weight 64 64 1 1
up.1.attn.1.q.bias 64
up.1.attn.1.q.weight 64 64 1 1
up.1.attn.1.v.bias 64
up.1.attn.1.v.weight 64 64 1 1
up.1.block.0.conv1.bias 64
up.1.block.0.conv1.weight 64 128 3 3
up.1.block.0.conv2.bias 64
up.1.block.0.conv2.weight 64 64 3 3
up.1.block.0.nin_shortcut.bias 64
up.1.block.0.nin_shortcut.weight 64 128 1 1
up.1.block.0.norm1.bias 128
up.1.block.0.norm1.weight 128
up.1.block.0.norm2.bias 64
up.1.block.0.norm2.weight 64
up.1.block.0.temb_proj.bias 64
up.1.block.0.temb_proj.weight 64 128
up.1.block.1.conv1.bias 64
up.1.block.1.conv1.weight 64 96 3 3
up.1.block.1.conv2.bias 64
up.1.block.1.conv2.weight 64 64 3 3
up.1.block.1.nin_shortcut.bias 64
up.1.block.1.nin_shortcut.weight 64 96 1 1
up.1.block.1.norm1.bias 96
up.1.block.1.norm1.weight 96
up.1.block.1.norm2.bias 64
up.1.block.1.norm2.weight 64
up.1.block.1.temb_proj.bias 64
up.1.block.1.temb_proj.weight 64 128
up.1.upsample.conv.bias 64
up.1.upsample.conv.weight 64 64 3 3
";

const AUTHORS_TINY_YML: &str = "data:\n  image_size: 16\nmodel:\n  type: simple\n  in_channels: 3\n  out_ch: 3\n  ch: 32\n  ch_mult: [1, 2]\n  num_res_blocks: 1\n  attn_resolutions: [8]\n  dropout: 0.0\n  resamp_with_conv: true\ndiffusion:\n  beta_schedule: linear\n  beta_start: 0.0001\n  beta_end: 0.02\n  num_diffusion_timesteps: 1000\n";

/// Canonical -> original DDPM names (the inverse of the loader's mapping), written
/// independently here and checked against the authors' own state_dict names.
fn to_ddpm_name(canon: &str, levels: usize) -> String {
    let p: Vec<&str> = canon.split('.').collect();
    let res = |s: &str| match s {
        "time_emb_proj" => "temb_proj".to_string(),
        "conv_shortcut" => "nin_shortcut".to_string(),
        o => o.to_string(),
    };
    let attn = |rest: &[&str]| -> String {
        match rest {
            ["group_norm", x] => format!("norm.{x}"),
            ["to_q", x] => format!("q.{x}"),
            ["to_k", x] => format!("k.{x}"),
            ["to_v", x] => format!("v.{x}"),
            ["to_out", "0", x] => format!("proj_out.{x}"),
            _ => panic!("{canon}"),
        }
    };
    match p.as_slice() {
        ["time_embedding", "linear_1", x] => format!("temb.dense.0.{x}"),
        ["time_embedding", "linear_2", x] => format!("temb.dense.1.{x}"),
        ["conv_norm_out", x] => format!("norm_out.{x}"),
        ["conv_in" | "conv_out", _] => canon.to_string(),
        ["down_blocks", i, "resnets", j, part, x] => {
            format!("down.{i}.block.{j}.{}.{x}", res(part))
        }
        ["down_blocks", i, "attentions", j, rest @ ..] => {
            format!("down.{i}.attn.{j}.{}", attn(rest))
        }
        ["down_blocks", i, "downsamplers", "0", "conv", x] => {
            format!("down.{i}.downsample.conv.{x}")
        }
        ["mid_block", "resnets", j, part, x] => {
            format!("mid.block_{}.{}.{x}", j.parse::<usize>().unwrap() + 1, res(part))
        }
        ["mid_block", "attentions", "0", rest @ ..] => format!("mid.attn_1.{}", attn(rest)),
        ["up_blocks", i, kind, rest @ ..] => {
            let level = levels - 1 - i.parse::<usize>().unwrap();
            match (*kind, rest) {
                ("resnets", [j, part, x]) => format!("up.{level}.block.{j}.{}.{x}", res(part)),
                ("attentions", [j, r @ ..]) => format!("up.{level}.attn.{j}.{}", attn(r)),
                ("upsamplers", ["0", "conv", x]) => format!("up.{level}.upsample.conv.{x}"),
                _ => panic!("{canon}"),
            }
        }
        _ => panic!("{canon}"),
    }
}

fn is_attn_proj_weight(canon: &str) -> bool {
    canon.contains(".attentions.")
        && (canon.ends_with("to_q.weight")
            || canon.ends_with("to_k.weight")
            || canon.ends_with("to_v.weight")
            || canon.ends_with("to_out.0.weight"))
}

fn ddpm_named(arch: &UNetArch, w: &BTreeMap<String, (Vec<usize>, Vec<f32>)>, prefix: &str) -> Vec<Stored> {
    w.iter()
        .map(|(n, (s, v))| {
            let mut shape = s.clone();
            if is_attn_proj_weight(n) {
                shape.extend([1, 1]);
            }
            stored_f32(&format!("{prefix}{}", to_ddpm_name(n, arch.levels())), &shape, v)
        })
        .collect()
}

#[test]
fn ddpm_names_match_the_authors_model() {
    let (arch, _) = parse_authors_config(AUTHORS_TINY_YML).unwrap();
    let mut ours: Vec<String> = expected_tensors(&arch)
        .iter()
        .map(|(n, s)| {
            let mut shape = s.clone();
            if is_attn_proj_weight(n) {
                shape.extend([1, 1]);
            }
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("{} {}", to_ddpm_name(n, arch.levels()), dims.join(" "))
        })
        .collect();
    ours.sort();
    let theirs: Vec<String> = AUTHORS_DDPM_TINY.lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
    assert_eq!(ours, theirs);
    // and the loader's mapping inverts it
    for (n, _) in expected_tensors(&arch) {
        let d = to_ddpm_name(&n, arch.levels());
        assert_eq!(canonical_name(&d, arch.levels()), n);
        assert_eq!(canonical_name(&format!("module.{d}"), arch.levels()), n);
    }
    assert_eq!(canonical_name("up.1.attn.0.proj_out.weight", 2), "up_blocks.0.attentions.0.to_out.0.weight");
    assert_eq!(
        canonical_name("down_blocks.1.attentions.0.proj_attn.bias", 2),
        "down_blocks.1.attentions.0.to_out.0.bias"
    );
    assert_eq!(canonical_name("mid_block.attentions.0.query.weight", 2), "mid_block.attentions.0.to_q.weight");
    // "key" outside an attention block is left alone
    assert_eq!(canonical_name("foo.key.weight", 2), "foo.key.weight");
}

// ---------------------------------------------------------------------------------
// Loading

#[test]
fn loads_a_diffusers_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let arch = tiny_arch();
    let w = random_weights(&arch, 1);
    let dir = tmp.path().join("model");
    diffusers_folder(&dir, TINY_CONFIG, &w);
    let m = load_model(&dir, None, None).unwrap();
    assert_eq!(m.arch, arch);
    assert_eq!(m.schedule, Schedule::ddpm_linear());
    assert_same_values(&m, &w);
    assert_eq!(m.param_count(), 113078);
    assert_eq!(m.hash.len(), 16);
    assert!(m.hash.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(m.source.contains("default DDPM linear"), "{}", m.source);
    // deterministic
    assert_eq!(load_model(&dir, None, None).unwrap().hash, m.hash);

    // a scheduler_config.json beside it changes the schedule and the hash
    std::fs::write(dir.join("scheduler_config.json"), SCHED_SCALED).unwrap();
    let m2 = load_model(&dir, None, None).unwrap();
    assert_eq!(m2.schedule, Schedule::from_betas(&scaled_linear_betas(0.00085, 0.012, 1000)));
    assert_ne!(m2.hash, m.hash);
    assert!(m2.source.contains("scheduler_config.json"));

    // one changed value changes the hash
    let mut w3 = w.clone();
    w3.get_mut("conv_out.bias").unwrap().1[0] += 1e-3;
    let dir3 = tmp.path().join("model3");
    diffusers_folder(&dir3, TINY_CONFIG, &w3);
    let m3 = load_model(&dir3, None, None).unwrap();
    assert_ne!(m3.hash, m.hash);

    // the folder with --config / --arch is a conflict
    assert_err_contains(load_model(&dir, None, Some("ddpm-256")), &["--arch"]);
    assert_err_contains(load_model(&dir, Some(&dir.join("config.json")), None), &["--config"]);
}

#[test]
fn loads_a_pipeline_folder_and_its_unet() {
    let tmp = tempfile::tempdir().unwrap();
    let arch = tiny_arch();
    let w = random_weights(&arch, 2);
    let root = tmp.path().join("pipe");
    diffusers_folder(&root.join("unet"), TINY_CONFIG, &w);
    std::fs::create_dir_all(root.join("scheduler")).unwrap();
    std::fs::write(root.join("scheduler/scheduler_config.json"), SCHED_SCALED).unwrap();
    std::fs::write(
        root.join("model_index.json"),
        r#"{"_class_name": "DDPMPipeline", "_diffusers_version": "0.42.1",
            "scheduler": ["diffusers", "DDIMScheduler"], "unet": ["diffusers", "UNet2DModel"]}"#,
    )
    .unwrap();
    let want = Schedule::from_betas(&scaled_linear_betas(0.00085, 0.012, 1000));
    let m = load_model(&root, None, None).unwrap();
    assert_eq!(m.arch, arch);
    assert_eq!(m.schedule, want);
    assert_same_values(&m, &w);
    // the unet/ folder alone finds ../scheduler
    let u = load_model(&root.join("unet"), None, None).unwrap();
    assert_eq!(u.schedule, want);
    assert_eq!(u.hash, m.hash);

    // the flat pipeline layout (google/ddpm-*): everything at the root
    let flat = tmp.path().join("flat");
    diffusers_folder(&flat, TINY_CONFIG, &w);
    std::fs::write(flat.join("scheduler_config.json"), SCHED_SCALED).unwrap();
    std::fs::write(
        flat.join("model_index.json"),
        r#"{"_class_name": "DDPMPipeline", "scheduler": ["diffusers", "DDPMScheduler"],
            "unet": ["diffusers", "UNet2DModel"]}"#,
    )
    .unwrap();
    let f = load_model(&flat, None, None).unwrap();
    assert_eq!(f.schedule, want);
    assert_eq!(f.hash, m.hash);
    assert!(f.source.contains("flat"), "{}", f.source);

    // latent-diffusion pipelines are refused
    std::fs::write(
        root.join("model_index.json"),
        r#"{"_class_name": "LDMPipeline", "unet": ["diffusers", "UNet2DModel"],
            "vqvae": ["diffusers", "VQModel"], "scheduler": ["diffusers", "DDIMScheduler"]}"#,
    )
    .unwrap();
    assert_err_contains(load_model(&root, None, None), &["vqvae", "pixel-space"]);

    // an empty folder
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_err_contains(load_model(&empty, None, None), &["config.json"]);
    assert_err_contains(load_model(&tmp.path().join("nope"), None, None), &["does not exist"]);
}

#[test]
fn loads_old_attention_names_and_module_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let arch = tiny_arch();
    let w = random_weights(&arch, 3);
    let ts: Vec<Stored> = w
        .iter()
        .map(|(n, (s, v))| {
            let old = n
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            stored_f32(&format!("module.{old}"), s, v)
        })
        .collect();
    assert!(ts.iter().any(|t| t.name.contains(".proj_attn.")));
    let dir = tmp.path().join("old");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), TINY_CONFIG).unwrap();
    write_st(&dir.join("diffusion_pytorch_model.safetensors"), &ts);
    let m = load_model(&dir, None, None).unwrap();
    assert_same_values(&m, &w);

    // the same tensor under both names is an error
    let mut ts2 = ts;
    let (s, v) = &w["mid_block.attentions.0.to_q.weight"];
    ts2.push(stored_f32("mid_block.attentions.0.to_q.weight", s, v));
    write_st(&dir.join("diffusion_pytorch_model.safetensors"), &ts2);
    assert_err_contains(load_model(&dir, None, None), &["both map to", "to_q.weight"]);
}

#[test]
fn loads_ddpm_names_with_the_authors_yaml_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let (arch, _) = parse_authors_config(AUTHORS_TINY_YML).unwrap();
    let w = random_weights(&arch, 4);
    let file = tmp.path().join("celeba_tiny.safetensors");
    write_st(&file, &ddpm_named(&arch, &w, ""));
    let yml = tmp.path().join("tiny.yml");
    std::fs::write(&yml, AUTHORS_TINY_YML).unwrap();
    let m = load_model(&file, Some(&yml), None).unwrap();
    assert_eq!(m.arch, arch);
    assert_eq!(m.schedule, Schedule::ddpm_linear());
    assert_same_values(&m, &w);
    assert_eq!(m.param_count(), 702499); // the authors' Model for this config
    assert!(m.tensors["mid_block.attentions.0.to_q.weight"].shape.len() == 2);

    // the same layout as JSON, and a `module.` prefix (DataParallel checkpoints)
    let json = serde_json::json!({
        "data": {"image_size": 16},
        "model": {"type": "simple", "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 2],
                  "num_res_blocks": 1, "attn_resolutions": [8], "resamp_with_conv": true},
        "diffusion": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
                      "num_diffusion_timesteps": 1000}
    });
    let jf = tmp.path().join("tiny.json");
    std::fs::write(&jf, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    let file2 = tmp.path().join("dp.safetensors");
    write_st(&file2, &ddpm_named(&arch, &w, "module."));
    let m2 = load_model(&file2, Some(&jf), None).unwrap();
    assert_same_values(&m2, &w);
    assert_eq!(m2.hash, m.hash);
}

#[test]
fn single_file_with_a_diffusers_config() {
    let tmp = tempfile::tempdir().unwrap();
    let arch = tiny_arch();
    let w = random_weights(&arch, 5);
    let file = tmp.path().join("w.safetensors");
    write_weights(&file, &w);
    let cfgdir = tmp.path().join("cfg");
    std::fs::create_dir_all(&cfgdir).unwrap();
    std::fs::write(cfgdir.join("config.json"), TINY_CONFIG).unwrap();
    let m = load_model(&file, Some(&cfgdir.join("config.json")), None).unwrap();
    assert_eq!(m.schedule, Schedule::ddpm_linear());
    assert_same_values(&m, &w);
    std::fs::write(cfgdir.join("scheduler_config.json"), SCHED_SCALED).unwrap();
    let m = load_model(&file, Some(&cfgdir.join("config.json")), None).unwrap();
    assert_eq!(m.schedule, Schedule::from_betas(&scaled_linear_betas(0.00085, 0.012, 1000)));
}

#[test]
fn half_precision_and_f64_tensors_load_as_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let arch = tiny_arch();
    let w = random_weights(&arch, 6);
    for (dtype, tag) in [(Dtype::F16, "f16"), (Dtype::BF16, "bf16"), (Dtype::F64, "f64")] {
        let mut want = BTreeMap::new();
        let ts: Vec<Stored> = w
            .iter()
            .map(|(n, (s, v))| {
                let (bytes, back): (Vec<u8>, Vec<f32>) = match dtype {
                    Dtype::F16 => {
                        let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
                        (
                            h.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
                            h.iter().map(|x| x.to_f32()).collect(),
                        )
                    }
                    Dtype::BF16 => {
                        let h: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
                        (
                            h.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
                            h.iter().map(|x| x.to_f32()).collect(),
                        )
                    }
                    _ => (v.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect(), v.clone()),
                };
                want.insert(n.clone(), (s.clone(), back));
                Stored { name: n.clone(), dtype, shape: s.clone(), bytes }
            })
            .collect();
        let dir = tmp.path().join(tag);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), TINY_CONFIG).unwrap();
        write_st(&dir.join("diffusion_pytorch_model.safetensors"), &ts);
        let m = load_model(&dir, None, None).unwrap();
        assert_same_values(&m, &want);
    }
}

#[test]
fn preset_on_a_tiny_file_names_a_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let arch = tiny_arch();
    let file = tmp.path().join("tiny.safetensors");
    write_weights(&file, &random_weights(&arch, 7));
    assert_err_contains(
        load_model(&file, None, Some("ddpm-256")),
        &["tiny.safetensors", "missing", "down_blocks.", "unexpected"],
    );
    // same names, other shapes: the preset with a file of 256-layout names but tiny
    // channels -> wrong shape naming the tensor
    let p = preset("ddpm-256").unwrap().arch;
    let mut small = p.clone();
    small.block_out_channels = vec![32, 32, 64, 64, 128, 128];
    small.time_embed_dim = 128;
    let file2 = tmp.path().join("narrow.safetensors");
    write_weights(&file2, &random_weights(&small, 8));
    assert_err_contains(
        load_model(&file2, None, Some("ddpm-256")),
        &["narrow.safetensors", "wrong shape", "conv_in.weight", "[128, 3, 3, 3]", "[32, 3, 3, 3]"],
    );
    assert_err_contains(load_model(&file2, None, Some("nope")), &["nope", "ddpm-256"]);
}

fn write_folder_with(dir: &Path, ts: &[Stored]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), TINY_CONFIG).unwrap();
    let f = dir.join("diffusion_pytorch_model.safetensors");
    write_st(&f, ts);
    f
}

#[test]
fn weight_refusals_name_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let arch = tiny_arch();
    let w = random_weights(&arch, 9);
    let base: Vec<Stored> = w.iter().map(|(n, (s, v))| stored_f32(n, s, v)).collect();
    let clone = |ts: &[Stored]| -> Vec<Stored> {
        ts.iter()
            .map(|t| Stored { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone(), bytes: t.bytes.clone() })
            .collect()
    };

    // missing
    let dir = tmp.path().join("missing");
    let ts: Vec<Stored> = clone(&base).into_iter().filter(|t| t.name != "up_blocks.1.resnets.0.conv1.weight").collect();
    write_folder_with(&dir, &ts);
    assert_err_contains(
        load_model(&dir, None, None),
        &["diffusion_pytorch_model.safetensors", "1 missing", "up_blocks.1.resnets.0.conv1.weight"],
    );
    // many missing: first ten and a count
    let dir = tmp.path().join("many_missing");
    let ts: Vec<Stored> = clone(&base).into_iter().filter(|t| !t.name.starts_with("up_blocks")).collect();
    write_folder_with(&dir, &ts);
    let e = err_text(load_model(&dir, None, None));
    assert!(e.contains("in all)"), "{e}");

    // unexpected
    let dir = tmp.path().join("unexpected");
    let mut ts = clone(&base);
    ts.push(stored_f32("logvar", &[3], &[0.0, 0.0, 0.0]));
    write_folder_with(&dir, &ts);
    assert_err_contains(load_model(&dir, None, None), &["unexpected", "logvar"]);

    // wrong shape
    let dir = tmp.path().join("shape");
    let mut ts = clone(&base);
    let t = ts.iter_mut().find(|t| t.name == "conv_in.weight").unwrap();
    t.shape = vec![8, 3, 1, 9];
    write_folder_with(&dir, &ts);
    assert_err_contains(load_model(&dir, None, None), &["conv_in.weight", "[8, 3, 3, 3]", "[8, 3, 1, 9]"]);

    // NaN and inf
    for (tag, bad) in [("nan", f32::NAN), ("inf", f32::NEG_INFINITY)] {
        let dir = tmp.path().join(tag);
        let mut ts = clone(&base);
        let t = ts.iter_mut().find(|t| t.name == "mid_block.resnets.1.norm2.bias").unwrap();
        t.bytes[4..8].copy_from_slice(&bad.to_le_bytes());
        write_folder_with(&dir, &ts);
        assert_err_contains(load_model(&dir, None, None), &["non-finite", "mid_block.resnets.1.norm2.bias"]);
    }

    // unsupported dtype
    let dir = tmp.path().join("dtype");
    let mut ts = clone(&base);
    let t = ts.iter_mut().find(|t| t.name == "conv_out.bias").unwrap();
    t.dtype = Dtype::I32;
    write_folder_with(&dir, &ts);
    assert_err_contains(load_model(&dir, None, None), &["conv_out.bias", "I32", "dtype"]);

    // truncated file
    let dir = tmp.path().join("trunc");
    let f = write_folder_with(&dir, &base);
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    assert_err_contains(load_model(&dir, None, None), &["diffusion_pytorch_model.safetensors", "truncated"]);
    // header cut short
    std::fs::write(&f, &bytes[..50]).unwrap();
    assert_err_contains(load_model(&dir, None, None), &["diffusion_pytorch_model.safetensors"]);
    std::fs::write(&f, &bytes[..5]).unwrap();
    assert_err_contains(load_model(&dir, None, None), &["diffusion_pytorch_model.safetensors"]);
    // bad header: garbage JSON, absurd length, offsets that overflow
    let mut bad = 20u64.to_le_bytes().to_vec();
    bad.extend_from_slice(b"{not json at all!!!}");
    std::fs::write(&f, &bad).unwrap();
    assert_err_contains(load_model(&dir, None, None), &["diffusion_pytorch_model.safetensors", "header"]);
    let mut bad = u64::MAX.to_le_bytes().to_vec();
    bad.extend_from_slice(b"{}");
    std::fs::write(&f, &bad).unwrap();
    assert_err_contains(load_model(&dir, None, None), &["diffusion_pytorch_model.safetensors"]);
    let hdr = format!(r#"{{"a":{{"dtype":"U8","shape":[{}],"data_offsets":[0,{}]}}}}"#, u64::MAX - 9, u64::MAX - 9);
    let mut bad = (hdr.len() as u64).to_le_bytes().to_vec();
    bad.extend_from_slice(hdr.as_bytes());
    std::fs::write(&f, &bad).unwrap();
    assert_err_contains(load_model(&dir, None, None), &["diffusion_pytorch_model.safetensors"]);
    let hdr = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#;
    let mut bad = (hdr.len() as u64).to_le_bytes().to_vec();
    bad.extend_from_slice(hdr.as_bytes());
    bad.extend_from_slice(&[0u8; 4]);
    std::fs::write(&f, &bad).unwrap();
    assert_err_contains(load_model(&dir, None, None), &["diffusion_pytorch_model.safetensors", "invalid"]);

    // an unsupported config field names the field
    let dir = tmp.path().join("field");
    write_folder_with(&dir, &base);
    std::fs::write(
        dir.join("config.json"),
        tiny_with("resnet_time_scale_shift", Some(serde_json::json!("scale_shift"))),
    )
    .unwrap();
    assert_err_contains(load_model(&dir, None, None), &["config.json", "resnet_time_scale_shift", "scale_shift"]);
    // no weights / pickle only
    let dir = tmp.path().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), TINY_CONFIG).unwrap();
    std::fs::write(dir.join("diffusion_pytorch_model.bin"), b"x").unwrap();
    assert_err_contains(load_model(&dir, None, None), &["diffusion_pytorch_model.bin", "safetensors"]);
}

#[test]
fn single_file_needs_a_config_or_preset() {
    let tmp = tempfile::tempdir().unwrap();
    let arch = tiny_arch();
    let file = tmp.path().join("lonely.safetensors");
    write_weights(&file, &random_weights(&arch, 10));
    assert_err_contains(load_model(&file, None, None), &["lonely.safetensors", "--config", "--arch"]);
    let yml = tmp.path().join("c.yml");
    std::fs::write(&yml, AUTHORS_TINY_YML).unwrap();
    assert_err_contains(load_model(&file, Some(&yml), Some("ddpm-256")), &["--config", "--arch"]);
    let ckpt = tmp.path().join("celeba_hq.ckpt");
    std::fs::write(&ckpt, b"pickle").unwrap();
    assert_err_contains(load_model(&ckpt, Some(&yml), None), &["celeba_hq.ckpt", "safetensors"]);
    let junk = tmp.path().join("junk.yml");
    std::fs::write(&junk, "foo: 1\n").unwrap();
    assert_err_contains(load_model(&file, Some(&junk), None), &["junk.yml", "neither"]);
}

/// A diffusers folder whose weights are sharded (`*.safetensors.index.json`) loads to
/// the same tensors as one file; a missing shard, a tensor in two shards, a shard path
/// outside the folder and a broken index are named errors.
#[test]
fn sharded_weights_load_like_one_file() {
    let arch = tiny_arch();
    let w = random_weights(&arch, 11);
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join("one");
    diffusers_folder(&one, TINY_CONFIG, &w);
    let whole = load_model(&one, None, None).unwrap();

    let shard = |dir: &Path, parts: usize, index: Option<String>| {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.json"), TINY_CONFIG).unwrap();
        let names: Vec<&String> = w.keys().collect();
        let mut map = serde_json::Map::new();
        for (k, chunk) in names.chunks(names.len().div_ceil(parts)).enumerate() {
            let file = format!("diffusion_pytorch_model-{:05}-of-{parts:05}.safetensors", k + 1);
            let ts: Vec<Stored> = chunk.iter().map(|n| stored_f32(n, &w[*n].0, &w[*n].1)).collect();
            write_st(&dir.join(&file), &ts);
            for n in chunk {
                map.insert((*n).clone(), serde_json::Value::String(file.clone()));
            }
        }
        let idx = index.unwrap_or_else(|| serde_json::json!({"metadata": {}, "weight_map": map}).to_string());
        std::fs::write(dir.join("diffusion_pytorch_model.safetensors.index.json"), idx).unwrap();
    };
    let sharded = tmp.path().join("sharded");
    shard(&sharded, 3, None);
    let m = load_model(&sharded, None, None).unwrap();
    assert_same_values(&m, &w);
    assert_eq!(m.hash, whole.hash, "the same weights must hash the same");

    let missing = tmp.path().join("missing");
    shard(&missing, 2, None);
    std::fs::remove_file(missing.join("diffusion_pytorch_model-00002-of-00002.safetensors")).unwrap();
    assert_err_contains(load_model(&missing, None, None), &["00002-of-00002", "missing"]);

    let outside = tmp.path().join("outside");
    shard(
        &outside,
        1,
        Some(r#"{"weight_map": {"conv_in.weight": "../one/diffusion_pytorch_model.safetensors"}}"#.into()),
    );
    assert_err_contains(load_model(&outside, None, None), &["not a plain file name"]);

    let broken = tmp.path().join("broken");
    shard(&broken, 1, Some("{not json".into()));
    assert_err_contains(load_model(&broken, None, None), &["index.json", "not a valid JSON index"]);

    // One tensor stored in two shards.
    let twice = tmp.path().join("twice");
    shard(&twice, 2, None);
    let (n0, (s0, v0)) = w.iter().next().unwrap();
    write_st(&twice.join("extra.safetensors"), &[stored_f32(n0, s0, v0)]);
    let idx = std::fs::read_to_string(twice.join("diffusion_pytorch_model.safetensors.index.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&idx).unwrap();
    v["weight_map"]["extra_tensor"] = serde_json::Value::String("extra.safetensors".into());
    std::fs::write(twice.join("diffusion_pytorch_model.safetensors.index.json"), v.to_string()).unwrap();
    assert_err_contains(load_model(&twice, None, None), &["both map to", n0]);
}

/// Random weights are drawn in the checkpoint's module order (the graph builders'
/// declaration order), so `random-model` files, and every benchmark made from them,
/// stay the same from one build to the next: pinned for a DDPM and an ADM layout.
#[test]
fn random_weights_follow_the_module_order() {
    let adm = preset("adm-afhq-256").unwrap().arch;
    let adm = UNetArch {
        sample_size: 32,
        block_out_channels: vec![32, 64],
        down_attention: vec![false, true],
        up_attention: vec![true, false],
        ..adm
    };
    for (arch, want) in [(tiny_arch(), "3d2b2a974c212e07"), (adm, "895d063ff3db4dbb")] {
        let m = LoadedModel::random(&arch, Schedule::ddpm_linear(), 7);
        assert_eq!(m.hash, want, "{}", arch.family_name());
    }
}
