//! Reading a checkpoint's safetensors files (one, or the shards of an index) and
//! validating them against the graph's tensor list: no missing, unexpected or
//! duplicate tensors, the right shapes, a float dtype, finite values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors};

use super::expected_tensors;
use super::names::{canonical_name, is_attention_projection};
use crate::model::arch::UNetArch;
use crate::tensor::HostTensor;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_errors_are_named() {
        let f = Path::new("w.safetensors");
        let e = precheck_header(f, &[1, 2, 3]).unwrap_err().to_string();
        assert!(e.contains("w.safetensors") && e.contains("shorter than the 8-byte"), "{e}");
        let mut b = 100u64.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        assert!(precheck_header(f, &b).unwrap_err().to_string().contains("truncated"));
        let header = br#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header);
        b.extend_from_slice(&[0; 8]);
        let e = precheck_header(f, &b).unwrap_err().to_string();
        assert!(e.contains("tensor x ends at data byte 16"), "{e}");
        assert!(to_f32(f, "x", Dtype::I32, &[0; 4]).unwrap_err().to_string().contains("unsupported dtype"));
        assert_eq!(to_f32(f, "x", Dtype::BF16, &[0x80, 0x3f]).unwrap(), vec![1.0]);
    }
}
