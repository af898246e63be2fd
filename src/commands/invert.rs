//! `diffstyle invert`: one image's DDIM inversion written as an inversion cache.

use std::path::Path;

use anyhow::Result;

use super::{check_parent, model, pipeline_options, report_pipeline, stem, Common, ModelArgs, Progress};
use crate::diffusion::method::Settings;
use crate::pipeline::Pipeline;

pub fn invert(c: &Common, m: &ModelArgs, image: &Path, out: &Path, inv_steps: usize) -> Result<()> {
    let model = model(m)?;
    let s = Settings { inv_steps, ..Settings::default() };
    s.validate(&model.schedule)?;
    check_parent(out)?;
    let p = Pipeline::new(model, &pipeline_options(c, 1))?;
    let im = p.image_from_path(image)?;
    let bar = Progress::new(c, inv_steps - 1, &format!("invert {}", stem(image)));
    let inv = p.invert_batch(&[&im], inv_steps, &mut || bar.tick())?.remove(0);
    drop(bar);
    p.save_inversion(out, &inv, inv_steps, &image.display().to_string())?;
    report_pipeline(c, &p);
    Ok(())
}
