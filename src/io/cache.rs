//! The inversion cache: one image's DDIM inversion (x_0, x_T and the h trajectory) as
//! safetensors, with the model hash and the settings that made it, so that `transfer`
//! can reuse it and refuse it when it does not belong to the run. This file knows the
//! format only; the diffusion layer turns a [`Cached`] record into an inversion
//! (`Inversion::from_parts`, which checks the timesteps).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors};

use super::safetensors::{write, Entry};

const FORMAT: &str = "diffstyle-inversion-v1";

/// What a cache must match to be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheKey {
    pub model_hash: String,
    pub inv_steps: usize,
}

/// One image's inversion as the cache file stores it.
pub struct Cached {
    pub x0: Vec<f32>,
    pub x_t: Vec<f32>,
    /// The h trajectory, key-major: `keys.len()` blocks of `h_shape`.
    pub h: Vec<f32>,
    /// The timesteps at which h was recorded.
    pub keys: Vec<i64>,
}

/// Writes `inv`, `shape` (x0 and x_t) and `h_shape` (one h) describing its arrays.
pub fn save(
    path: &Path,
    inv: &Cached,
    key: &CacheKey,
    source: &str,
    shape: [usize; 3],
    h_shape: [usize; 3],
) -> Result<()> {
    let k = inv.keys.len();
    let tensors = [
        Entry::f32("x0", shape.to_vec(), &inv.x0),
        Entry::f32("x_t", shape.to_vec(), &inv.x_t),
        Entry::f32("h", vec![k, h_shape[0], h_shape[1], h_shape[2]], &inv.h),
        Entry::i64("keys", vec![k], &inv.keys),
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
    write(path, &tensors, Some(meta))
}

/// True when `path` looks like an inversion cache rather than an image.
pub fn is_cache(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

/// Reads a cache and checks it against `want` and the run's shapes.
pub fn load(path: &Path, want: &CacheKey, shape: [usize; 3], h_shape: [usize; 3]) -> Result<Cached> {
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
    let keys_t = st.tensor("keys").map_err(|_| anyhow::anyhow!("{p}: the cache has no tensor `keys`"))?;
    ensure!(keys_t.dtype() == Dtype::I64 && keys_t.shape().len() == 1, "{p}: tensor `keys` is malformed");
    let k = keys_t.shape()[0];
    let keys: Vec<i64> =
        keys_t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
    Ok(Cached {
        x0: f32_tensor("x0", &shape)?,
        x_t: f32_tensor("x_t", &shape)?,
        h: f32_tensor("h", &[k, h_shape[0], h_shape[1], h_shape[2]])?,
        keys,
    })
}
