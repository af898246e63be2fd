//! `diffstyle sample`: plain DDIM sampling from seeded noise, as a grid.

use std::path::Path;

use anyhow::{ensure, Result};

use super::{check_parent, engine, model, on_backend, report_device, Common, ModelArgs, Progress};
use crate::backend::Backend;
use crate::diffusion::method::Settings;
use crate::model::unet::UNet;

pub fn sample(c: &Common, m: &ModelArgs, n: usize, steps: usize, seed: u64, out: &Path) -> Result<()> {
    on_backend!(c, |be| sample_on(be, c, m, n, steps, seed, out))
}

#[allow(clippy::too_many_arguments)]
fn sample_on<B: Backend>(
    be: &B,
    c: &Common,
    m: &ModelArgs,
    n: usize,
    steps: usize,
    seed: u64,
    out: &Path,
) -> Result<()> {
    let model = model(m)?;
    ensure!(n >= 1, "-n must be at least 1");
    let s = Settings { gen_steps: steps, ..Settings::default() };
    s.validate(&model.schedule)?;
    check_parent(out)?;
    let unet = UNet::new(be, &model, c.precision)?;
    let mut eng = engine(be, &unet, &model)?;
    let mut imgs = vec![];
    for k in 0..n {
        let bar = Progress::new(c, steps, &format!("sample {}/{n}", k + 1));
        let z = eng.noise(seed, k as u32);
        imgs.push(eng.ddim(&z, steps, &mut || bar.tick())?);
    }
    let size = model.arch.sample_size;
    let refs: Vec<&[f32]> = imgs.iter().map(|v| v.as_slice()).collect();
    let nrow = (n as f64).sqrt().ceil() as usize;
    let (grid, gh, gw) = crate::io::grid::make_grid(&refs, size, nrow, 1);
    crate::io::image::save_png(out, &grid, gh, gw)?;
    report_device(c, be);
    Ok(())
}
