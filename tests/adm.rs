//! The ADM family (guided-diffusion `UNetModel`): presets, the create_model flag
//! config, the tensor list, loading and its refusals. Forward and method parity are in
//! unet_parity.rs / method_parity.rs (fixtures adm_*).

use std::path::{Path, PathBuf};

use diffstyle::model::config::{parse_adm_config, parse_authors_config, preset, preset_names};
use diffstyle::model::graph::Graph;
use diffstyle::model::weights::{expected_tensors, load_model};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet").join(name)
}

fn err_text<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

#[track_caller]
fn assert_err_contains<T: std::fmt::Debug>(r: anyhow::Result<T>, needles: &[&str]) {
    let e = err_text(r);
    for n in needles {
        assert!(e.contains(n), "error {e:?} does not mention {n:?}");
    }
}

/// Parameter counts of the models the authors' code builds (their UNetModel, counted
/// with PyTorch: 93,563,910 for AFHQ_DICT / METFACE_DICT; 552,814,086 for IMAGENET_DICT
/// without the class embedding that the unconditional checkpoint lacks).
#[test]
fn presets_have_the_authors_sizes() {
    for (name, params, tensors) in [
        ("adm-afhq-256", 93_563_910usize, 362usize),
        ("adm-ffhq-p2-256", 93_563_910, 362),
        ("adm-metfaces-p2-256", 93_563_910, 362),
        ("adm-imagenet-256-uncond", 552_814_086, 566),
    ] {
        assert!(preset_names().contains(&name), "{name}");
        let p = preset(name).unwrap();
        let list = expected_tensors(&p.arch);
        let n: usize = list.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!((n, list.len()), (params, tensors), "{name}");
        assert_eq!(p.arch.h_size(), 8);
        assert_eq!(p.arch.eps_channels(), 3);
        assert_eq!(p.arch.out_channels, 6);
        let g = Graph::build(&p.arch);
        // h = the middle block's output; eps = the first 3 of the 6 outputs.
        assert_eq!(g.values[g.eps].c, 3);
        assert_eq!((g.values[g.h].c, g.values[g.h].h), (p.arch.h_channels(), 8));
    }
    let names: Vec<String> = expected_tensors(&preset("adm-afhq-256").unwrap().arch).into_iter().map(|t| t.0).collect();
    for n in [
        "time_embed.0.weight",
        "input_blocks.0.0.weight",
        "input_blocks.2.0.in_layers.0.weight", // the first down-sampling res block
        "input_blocks.9.1.qkv.weight",         // attention at 16x16
        "middle_block.1.proj_out.weight",
        "output_blocks.1.1.in_layers.0.weight", // up-sampling res block (8 -> 16)
        "output_blocks.3.2.in_layers.2.weight", // after the attention at 16x16
        "out.2.weight",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing");
    }
}

#[test]
fn flags_config_is_the_preset() {
    let text = r#"{"attention_resolutions": "16", "class_cond": false, "dropout": 0.0,
        "image_size": 256, "learn_sigma": true, "num_channels": 128, "num_head_channels": 64,
        "num_res_blocks": 1, "resblock_updown": true, "use_fp16": false,
        "use_scale_shift_norm": true, "num_heads": 4, "num_heads_upsample": -1,
        "channel_mult": "", "use_checkpoint": false, "use_new_attention_order": false}"#;
    let (arch, betas) = parse_adm_config(text).unwrap();
    let p = preset("adm-metfaces-p2-256").unwrap();
    assert_eq!(arch, p.arch);
    assert_eq!(Some(betas), p.betas);
    // YAML and list forms.
    let yaml = "image_size: 256\nnum_channels: 256\nnum_res_blocks: 2\nchannel_mult: [1, 1, 2, 2, 4, 4]\n\
                learn_sigma: true\nattention_resolutions: [32, 16, 8]\nnum_head_channels: 64\nnum_heads: 4\n\
                use_scale_shift_norm: true\nresblock_updown: true\n";
    let (arch, _) = parse_adm_config(yaml).unwrap();
    assert_eq!(arch, preset("adm-imagenet-256-uncond").unwrap().arch);
}

/// The authors' configs/{afhq,ffhq,metface,imagenet}.yml: their code builds the ADM by
/// data.dataset and ignores the (DDPM) model section; so does diffstyle.
#[test]
fn authors_yaml_of_the_adm_datasets() {
    let yaml = |dataset: &str, size: usize| {
        format!(
            "data:\n    dataset: \"{dataset}\"\n    image_size: {size}\n    channels: 3\n\
             model:\n    type: \"simple\"\n    in_channels: 3\n    out_ch: 3\n    ch: 128\n\
             \x20   ch_mult: [1, 1, 2, 2, 4, 4]\n    num_res_blocks: 2\n    attn_resolutions: [16, ]\n\
             \x20   resamp_with_conv: True\n\
             diffusion:\n    beta_schedule: linear\n    beta_start: 0.0001\n    beta_end: 0.02\n\
             \x20   num_diffusion_timesteps: 1000\n"
        )
    };
    for (ds, name) in [
        ("AFHQ", "adm-afhq-256"),
        ("FFHQ", "adm-ffhq-p2-256"),
        ("MetFACE", "adm-metfaces-p2-256"),
        ("IMAGENET", "adm-imagenet-256-uncond"),
    ] {
        let (arch, betas) = parse_authors_config(&yaml(ds, 256)).unwrap();
        let p = preset(name).unwrap();
        assert_eq!(arch, p.arch, "{ds}");
        assert_eq!(Some(betas), p.betas, "{ds}");
    }
    assert_err_contains(parse_authors_config(&yaml("AFHQ", 128)), &["AFHQ", "image_size is 128"]);
    // Other datasets keep the DDPM reading of the model section.
    let (arch, _) = parse_authors_config(&yaml("CelebA_HQ", 256)).unwrap();
    assert!(arch.adm.is_none());
}

#[test]
fn flags_config_refusals_name_the_field() {
    let base = |extra: &str| {
        format!(
            r#"{{"image_size": 64, "num_channels": 64, "num_res_blocks": 1, "attention_resolutions": "16"{extra}}}"#
        )
    };
    parse_adm_config(&base("")).unwrap();
    // Schedules: guided-diffusion's linear range scaled to diffusion_steps; the
    // beta_start / beta_end extension; cosine.
    let (_, b) = parse_adm_config(&base(r#", "diffusion_steps": 500"#)).unwrap();
    assert_eq!((b.len(), b[0], *b.last().unwrap()), (500, 0.0002, 0.04));
    let (_, b) = parse_adm_config(&base(r#", "beta_end": 0.002"#)).unwrap();
    assert_eq!((b.len(), b[0], *b.last().unwrap()), (1000, 0.0001, 0.002));
    let (_, b) = parse_adm_config(&base(r#", "noise_schedule": "cosine""#)).unwrap();
    assert!(b.len() == 1000 && b[999] <= 0.999);
    assert_err_contains(parse_adm_config(&base(r#", "noise_schedule": "cosine", "beta_end": 0.01"#)), &["beta_end"]);
    assert_err_contains(parse_adm_config(&base(r#", "class_cond": true"#)), &["class_cond"]);
    assert_err_contains(parse_adm_config(&base(r#", "channel_mult": "0.5,1,2""#)), &["channel_mult", "0.5"]);
    assert_err_contains(parse_adm_config(&base(r#", "noise_schedule": "sqrt""#)), &["noise_schedule", "sqrt"]);
    assert_err_contains(parse_adm_config(&base(r#", "predict_xstart": true"#)), &["predict_xstart"]);
    assert_err_contains(parse_adm_config(&base(r#", "num_head_channels": 48"#)), &["num_head_channels 48"]);
    assert_err_contains(parse_adm_config(&base(r#", "num_heads": 5"#)), &["5 heads"]);
    assert_err_contains(parse_adm_config(&base(r#", "attention_resolutions": "24""#)), &["attention_resolutions"]);
    assert_err_contains(parse_adm_config(&base(r#", "num_channels": 48"#)), &["GroupNorm(32)", "48"]);
    assert_err_contains(
        parse_adm_config(
            r#"{"image_size": 512, "num_channels": 64, "num_res_blocks": 1, "attention_resolutions": "16"}"#,
        ),
        &["image_size 512", "channel_mult"],
    );
}

/// A converted checkpoint loads under its sidecar config; a missing, an unexpected and a
/// wrongly shaped tensor are refused by name.
#[test]
fn loading_and_refusals() {
    let dir = fixture("adm_film_updown");
    let (st, cfg) = (dir.join("model.safetensors"), dir.join("model.json"));
    let m = load_model(&st, Some(&cfg), None).unwrap();
    assert!(m.arch.adm.is_some());
    assert!(m.tensors.contains_key("input_blocks.1.0.emb_layers.1.weight"));

    let bytes = std::fs::read(&st).unwrap();
    let full = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rewrite = |name: &str, drop: &str, add: Option<(&str, Vec<usize>)>| {
        let mut ts: Vec<(String, Vec<usize>, Vec<u8>)> = full
            .tensors()
            .into_iter()
            .filter(|(n, _)| n != drop)
            .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
            .collect();
        if let Some((n, shape)) = add {
            let len: usize = shape.iter().product();
            ts.push((n.to_string(), shape, vec![0u8; 4 * len]));
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = ts
            .iter()
            .map(|(n, s, d)| {
                (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())
            })
            .collect();
        let p = tmp.path().join(name);
        safetensors::tensor::serialize_to_file(views, &None, &p).unwrap();
        p
    };
    let missing = rewrite("missing.safetensors", "middle_block.1.qkv.weight", None);
    assert_err_contains(load_model(&missing, Some(&cfg), None), &["missing.safetensors", "middle_block.1.qkv.weight"]);
    let extra = rewrite("extra.safetensors", "", Some(("label_emb.weight", vec![10, 128])));
    assert_err_contains(load_model(&extra, Some(&cfg), None), &["unexpected", "label_emb.weight"]);
    let wrong = rewrite("wrong.safetensors", "out.2.weight", Some(("out.2.weight", vec![3, 32, 3, 3])));
    assert_err_contains(load_model(&wrong, Some(&cfg), None), &["out.2.weight", "[6, 32, 3, 3]"]);
    // The DDPM preset on ADM weights names the mismatch.
    assert_err_contains(load_model(&st, None, Some("ddpm-256")), &["missing", "unexpected"]);
}
