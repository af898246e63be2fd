//! `diffstyle invert`: one image's DDIM inversion written as an inversion cache.

use std::path::Path;

use anyhow::Result;

use super::{
    cache_key, check_parent, engine, model, on_backend, report_device, shapes, stem, Common, ModelArgs, Progress,
};
use crate::backend::Backend;
use crate::diffusion::method::Settings;
use crate::io::cache;
use crate::model::unet::UNet;

pub fn invert(c: &Common, m: &ModelArgs, image: &Path, out: &Path, inv_steps: usize) -> Result<()> {
    on_backend!(c, |be| invert_on(be, c, m, image, out, inv_steps))
}

fn invert_on<B: Backend>(be: &B, c: &Common, m: &ModelArgs, image: &Path, out: &Path, inv_steps: usize) -> Result<()> {
    let model = model(m)?;
    let s = Settings { inv_steps, ..Settings::default() };
    s.validate(&model.schedule)?;
    check_parent(out)?;
    let unet = UNet::new(be, &model, c.precision)?;
    let mut eng = engine(be, &unet, &model)?;
    let x0 = crate::io::image::load_image(image, model.arch.sample_size)?.data;
    let bar = Progress::new(c, inv_steps - 1, &format!("invert {}", stem(image)));
    let inv = eng.invert(&x0, inv_steps, &mut || bar.tick())?;
    drop(bar);
    let (shape, h_shape) = shapes(&model);
    let rec = cache::Cached { x0: inv.x0, x_t: inv.x_t, h: inv.h, keys: inv.keys };
    cache::save(out, &rec, &cache_key(&model, c.precision, inv_steps), &image.display().to_string(), shape, h_shape)?;
    report_device(c, be);
    Ok(())
}
