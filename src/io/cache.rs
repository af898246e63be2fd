//! The inversion cache: one image's DDIM inversion (x_0, x_T and the h trajectory) as
//! safetensors, with the model hash and the settings that made it, so that `transfer`
//! can reuse it and refuse it when it does not belong to the run.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::diffusion::method::Inversion;

const FORMAT: &str = "diffstyle-inversion-v1";

/// What a cache must match to be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheKey {
    pub model_hash: String,
    pub inv_steps: usize,
}

pub fn save(
    path: &Path,
    inv: &Inversion,
    key: &CacheKey,
    source: &str,
    shape: [usize; 3],
    h_shape: [usize; 3],
) -> Result<()> {
    let k = inv.keys.len();
    let f32s = |v: &[f32]| bytemuck::cast_slice::<f32, u8>(v).to_vec();
    let keys: Vec<u8> = inv.keys.iter().flat_map(|k| k.to_le_bytes()).collect();
    let x0 = f32s(&inv.x0);
    let xt = f32s(&inv.x_t);
    let h = f32s(&inv.h);
    let s = shape.to_vec();
    let tensors = vec![
        ("x0", TensorView::new(Dtype::F32, s.clone(), &x0)?),
        ("x_t", TensorView::new(Dtype::F32, s, &xt)?),
        ("h", TensorView::new(Dtype::F32, vec![k, h_shape[0], h_shape[1], h_shape[2]], &h)?),
        ("keys", TensorView::new(Dtype::I64, vec![k], &keys)?),
    ];
    let meta: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("model_hash", key.model_hash.clone()),
        ("inv_steps", key.inv_steps.to_string()),
        ("source", source.to_string()),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b))
    .collect();
    let bytes = safetensors::serialize(tensors, &Some(meta))
        .with_context(|| format!("{}: cannot serialise the inversion cache", path.display()))?;
    super::atomic::write_atomic(path, &bytes)
}

/// True when `path` looks like an inversion cache rather than an image.
pub fn is_cache(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

pub fn load(path: &Path, want: &CacheKey, shape: [usize; 3], h_shape: [usize; 3]) -> Result<Inversion> {
    let p = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("{p}: cannot read the inversion cache"))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{p}: not a valid safetensors inversion cache ({e})"))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{p}: not a valid safetensors inversion cache ({e})"))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let get = |k: &str| meta.get(k).cloned().unwrap_or_default();
    if get("format") != FORMAT {
        bail!("{p}: not a diffstyle inversion cache (metadata format is `{}`)", get("format"));
    }
    if get("model_hash") != want.model_hash {
        bail!(
            "{p}: this inversion cache was made with another model (hash {} != {}); invert the image again",
            get("model_hash"),
            want.model_hash
        );
    }
    if get("inv_steps") != want.inv_steps.to_string() {
        bail!(
            "{p}: this inversion cache was made with --inv-steps {}, the run uses {}",
            get("inv_steps"),
            want.inv_steps
        );
    }
    let f32_tensor = |name: &str, dims: &[usize]| -> Result<Vec<f32>> {
        let t = st.tensor(name).map_err(|_| anyhow::anyhow!("{p}: the cache has no tensor `{name}`"))?;
        ensure!(t.dtype() == Dtype::F32, "{p}: tensor `{name}` must be f32");
        ensure!(t.shape() == dims, "{p}: tensor `{name}` has shape {:?}, expected {dims:?}", t.shape());
        let v: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        ensure!(v.iter().all(|x| x.is_finite()), "{p}: tensor `{name}` holds non-finite values");
        Ok(v)
    };
    let expect_keys = crate::diffusion::schedule::seq(want.inv_steps);
    let k = expect_keys.len() - 1;
    let keys_t = st.tensor("keys").map_err(|_| anyhow::anyhow!("{p}: the cache has no tensor `keys`"))?;
    ensure!(keys_t.dtype() == Dtype::I64 && keys_t.shape() == [k], "{p}: tensor `keys` is malformed");
    let keys: Vec<i64> =
        keys_t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
    ensure!(keys == expect_keys[..k], "{p}: the cache's timesteps do not match --inv-steps {}", want.inv_steps);
    Ok(Inversion {
        x0: f32_tensor("x0", &shape)?,
        x_t: f32_tensor("x_t", &shape)?,
        h: f32_tensor("h", &[k, h_shape[0], h_shape[1], h_shape[2]])?,
        keys,
    })
}
