//! `diffstyle random-model`: a checkpoint of seeded random weights for an architecture.

use std::path::Path;

use anyhow::Result;

use super::{check_parent, described_arch, ModelArgs};
use crate::io::safetensors::Entry;
use crate::model::weights::LoadedModel;

pub fn random_model(m: &ModelArgs, seed: u64, out: &Path) -> Result<()> {
    check_parent(out)?;
    let cfg = described_arch(m)?;
    let model = LoadedModel::random(&cfg.arch, cfg.schedule_or_default(), seed);
    let tensors: Vec<Entry> =
        model.tensors.iter().map(|(name, t)| Entry::f32(name, t.shape.clone(), &t.data)).collect();
    crate::io::safetensors::write(out, &tensors, None)?;
    println!(
        "{}: {} parameters of random weights (seed {seed}) for {}",
        out.display(),
        model.param_count(),
        cfg.source
    );
    Ok(())
}
