//! Weight loading: diffusers folders and pipelines, single safetensors files with a
//! config or a preset (`folder.rs`), name mapping of the other spellings to canonical
//! names (`names.rs`), reading and validating safetensors against the graph's tensor
//! list (`checkpoint.rs`), and the model hash (`hash.rs`).
//!
//! Canonical tensor names are those the graph builders declare (`ddpm.rs`: diffusers
//! `UNet2DModel` names with the new attention names, projections `[C, C]`; `adm.rs`:
//! the ADM family's own names and shapes).

mod checkpoint;
mod folder;
mod hash;
mod names;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, Result};

pub use checkpoint::{load_shards, load_tensors};
pub use folder::load_model;
pub use hash::model_hash;
pub use names::canonical_name;

use crate::model::arch::UNetArch;
use crate::model::graph::{Graph, Op, ParamSource};
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
        let g = Graph::build(arch);
        // The norms' scales, found through the ops that read them.
        let mut norm_scales = BTreeSet::new();
        for op in &g.ops {
            if let Op::GroupNorm { gamma, .. } = op {
                if let ParamSource::Tensor(t) = g.params[*gamma].source {
                    norm_scales.insert(t);
                }
            }
        }
        let mut tensors = BTreeMap::new();
        for (id, t) in g.tensors.into_iter().enumerate() {
            let (name, shape) = (t.name, t.shape);
            let n: usize = shape.iter().product();
            let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
            let scale = 1.0 / (fan_in as f32).sqrt();
            let is_norm_scale = norm_scales.contains(&id);
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

/// Names of the tensors in `expected_tensors(arch)` as a set (convenience for tests
/// and the forward pass).
pub fn expected_names(arch: &UNetArch) -> BTreeSet<String> {
    expected_tensors(arch).into_iter().map(|(n, _)| n).collect()
}
