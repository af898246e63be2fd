//! The one safetensors writer: inversion caches, `--dump-tensor` and `random-model`
//! checkpoints all go through [`write()`], atomically (a failed write leaves no file).

use std::collections::HashMap;
use std::path::Path;

use ::safetensors::tensor::{Dtype, TensorView};
use anyhow::{Context, Result};

/// A tensor's data as it is stored.
pub enum Data<'a> {
    F32(&'a [f32]),
    I64(&'a [i64]),
}

/// One named tensor to write.
pub struct Entry<'a> {
    pub name: &'a str,
    pub shape: Vec<usize>,
    pub data: Data<'a>,
}

impl<'a> Entry<'a> {
    pub fn f32(name: &'a str, shape: Vec<usize>, data: &'a [f32]) -> Self {
        Self { name, shape, data: Data::F32(data) }
    }

    pub fn i64(name: &'a str, shape: Vec<usize>, data: &'a [i64]) -> Self {
        Self { name, shape, data: Data::I64(data) }
    }
}

/// Writes `tensors` (and the string `metadata`, when given) to `path` atomically.
/// safetensors is little-endian, as are the machines this runs on, so the data is
/// stored as its in-memory bytes.
pub fn write(path: &Path, tensors: &[Entry<'_>], metadata: Option<HashMap<String, String>>) -> Result<()> {
    let what = || format!("{}: cannot serialise the tensors", path.display());
    let views = tensors
        .iter()
        .map(|t| {
            let (dtype, bytes): (Dtype, &[u8]) = match t.data {
                Data::F32(v) => (Dtype::F32, bytemuck::cast_slice(v)),
                Data::I64(v) => (Dtype::I64, bytemuck::cast_slice(v)),
            };
            Ok((t.name, TensorView::new(dtype, t.shape.clone(), bytes).with_context(what)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = ::safetensors::serialize(views, &metadata).with_context(what)?;
    super::atomic::write_atomic(path, &bytes)
}
