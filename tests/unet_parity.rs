//! U-Net forward parity: the CPU backend (f32) against goldens made by diffusers' own
//! `UNet2DModel` (float64) for random-weight tiny models (`tools/make_fixtures.py`), and
//! for the ADM family by the PyTorch reference `tools/dsref/adm.py` (float64; checked
//! against the authors' own `UNetModel` when the goldens are made,
//! `tools/make_adm_fixtures.py`).

use std::path::{Path, PathBuf};

use diffstyle::backend::{cpu::CpuBackend, Backend};
use diffstyle::dtype::Precision;

use diffstyle::model::unet::UNet;
use diffstyle::model::weights::load_model;
use diffstyle::tensor::{max_abs_diff, rel_l2};
use safetensors::SafeTensors;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet").join(name)
}

fn tensor(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("golden has no `{name}`"));
    t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn check(name: &str) {
    let dir = fixture(name);
    let model = if dir.join("model.json").is_file() {
        // ADM: the converter's outputs (tools/make_adm_fixtures.py)
        load_model(&dir.join("model.safetensors"), Some(&dir.join("model.json")), None)
    } else if dir.join("model.safetensors").is_file() {
        load_model(&dir.join("model.safetensors"), Some(&dir.join("config.yml")), None)
    } else {
        load_model(&dir, None, None)
    }
    .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let bytes = std::fs::read(dir.join("golden.safetensors")).unwrap();
    let gold = SafeTensors::deserialize(&bytes).unwrap();
    let x = tensor(&gold, "x");
    let t = tensor(&gold, "t");
    let n = t.len();
    let be = CpuBackend::new(0);
    let unet = UNet::new(&be, &model, Precision::F32).unwrap();
    let ws = unet.workspace(&be, n, n).unwrap();
    be.upload(unet.x(&ws), &x).unwrap();
    unet.forward(&be, &ws, &t).unwrap();
    let eps = be.download(unet.eps(&ws, n)).unwrap();
    let h = be.download(unet.h(&ws, n)).unwrap();
    let (want_eps, want_h) = (tensor(&gold, "eps"), tensor(&gold, "h"));
    let (de, dh) = (max_abs_diff(&eps, &want_eps), max_abs_diff(&h, &want_h));
    eprintln!(
        "{name}: eps max abs {de:.2e} (rel. L2 {:.2e}), h max abs {dh:.2e} (rel. L2 {:.2e})",
        rel_l2(&eps, &want_eps),
        rel_l2(&h, &want_h)
    );
    assert!(de < 1e-4, "{name}: eps differs from diffusers by {de:e}");
    assert!(dh < 1e-4, "{name}: h differs from diffusers by {dh:e}");
}

macro_rules! fixtures {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check(stringify!($name));
            }
        )*
    };
}

fixtures!(
    new_names,
    old_names,
    ddpm_format,
    f16,
    bf16,
    mixed_dtype,
    pipeline,
    s32_attn_groups,
    adm_film_updown,
    adm_plain
);
