//! `diffstyle transfer`: every content x style pair, inverted (or read from caches)
//! and generated in batches; one PNG per pair and the authors' grid.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use super::{cache_key, check_parent, model, on_backend, report_device, shapes, stem, Common, ModelArgs, Progress};
use crate::backend::Backend;
use crate::diffusion::method::{Engine, Inversion, Preset, Settings};
use crate::io::cache::{self, CacheKey};
use crate::io::safetensors::Entry;
use crate::model::unet::UNet;
use crate::model::weights::LoadedModel;

/// Knobs as given on the command line; `None` = the preset's value.
pub struct Knobs {
    pub preset: Preset,
    pub gamma: Option<f32>,
    pub t_edit: Option<i64>,
    pub inv_steps: Option<usize>,
    pub gen_steps: Option<usize>,
    pub replace_steps: Option<usize>,
    pub t_boost: Option<i64>,
    pub dt_lambda: Option<f32>,
    pub dt_end: Option<i64>,
    pub omega: Option<f32>,
    pub seed: Option<u64>,
}

impl Knobs {
    pub fn settings(&self) -> Settings {
        let p = self.preset.settings();
        Settings {
            gamma: self.gamma.unwrap_or(p.gamma),
            t_edit: self.t_edit.unwrap_or(p.t_edit),
            inv_steps: self.inv_steps.unwrap_or(p.inv_steps),
            gen_steps: self.gen_steps.unwrap_or(p.gen_steps),
            replace_steps: self.replace_steps.unwrap_or(p.replace_steps),
            t_boost: self.t_boost.unwrap_or(p.t_boost),
            dt_lambda: self.dt_lambda.unwrap_or(p.dt_lambda),
            dt_end: self.dt_end.unwrap_or(p.dt_end),
            omega: self.omega.unwrap_or(p.omega),
            seed: self.seed.unwrap_or(p.seed),
        }
    }
}

/// An image to invert, or a cache to load: decided and checked before any work.
enum Input {
    Image(Vec<f32>),
    Cached(Inversion),
}

fn read_input(path: &Path, m: &LoadedModel, key: &CacheKey) -> Result<Input> {
    let (shape, h_shape) = shapes(m);
    if cache::is_cache(path) {
        let c = cache::load(path, key, shape, h_shape)?;
        let inv = Inversion::from_parts(c.x0, c.x_t, c.h, c.keys, key.inv_steps)
            .with_context(|| path.display().to_string())?;
        Ok(Input::Cached(inv))
    } else {
        Ok(Input::Image(crate::io::image::load_image(path, m.arch.sample_size)?.data))
    }
}

/// What a `transfer` run is asked for: every content x style pair, `--out`, the
/// optional mask and latent dump, the knobs and the batch size.
#[derive(Clone, Copy)]
pub struct TransferJob<'a> {
    pub contents: &'a [PathBuf],
    pub styles: &'a [PathBuf],
    pub out: &'a Path,
    pub mask: Option<&'a Path>,
    pub dump: Option<&'a Path>,
    pub knobs: &'a Knobs,
    pub batch: usize,
}

pub fn transfer(c: &Common, m: &ModelArgs, job: &TransferJob) -> Result<()> {
    on_backend!(c, |be| transfer_on(be, c, m, job))
}

fn transfer_on<B: Backend>(be: &B, c: &Common, m: &ModelArgs, job: &TransferJob) -> Result<()> {
    let TransferJob { contents, styles, out, mask, dump, knobs, batch } = *job;
    let s = knobs.settings();
    ensure!(batch >= 1, "--batch must be at least 1");
    let model = model(m)?;
    s.validate(&model.schedule)?;
    let pairs = contents.len() * styles.len();
    ensure!(dump.is_none() || pairs == 1, "--dump-tensor needs exactly one content and one style");
    if pairs == 1 {
        check_parent(out)?;
    } else {
        ensure!(!out.is_file(), "{}: with {pairs} pairs --out must be a folder, not a file", out.display());
    }
    if let Some(d) = dump {
        check_parent(d)?;
    }
    let unet = UNet::new(be, &model, c.precision)?;
    // No larger than the work: a batch slot without a pair would only be padding.
    let batch = batch.min(pairs);
    let mut eng = Engine::with_batch(be, &unet, &model.schedule, batch)
        .with_context(|| format!("model {} with --batch {batch}", model.source))?;
    let key = cache_key(&model, c.precision, s.inv_steps);
    // Every input is read and checked before any compute.
    let mut inputs: HashMap<PathBuf, Input> = HashMap::new();
    for p in contents.iter().chain(styles) {
        if !inputs.contains_key(p) {
            inputs.insert(p.clone(), read_input(p, &model, &key)?);
        }
    }
    let hs = model.arch.h_size();
    let mask = mask.map(|p| crate::io::mask::load_mask(p, hs)).transpose()?;

    let t0 = Instant::now();
    let mut inverted: HashMap<PathBuf, Inversion> = HashMap::new();
    let mut to_invert = vec![];
    for (p, input) in inputs {
        match input {
            Input::Cached(inv) => {
                inverted.insert(p, inv);
            }
            Input::Image(x0) => to_invert.push((p, x0)),
        }
    }
    for chunk in to_invert.chunks(batch) {
        let names: Vec<String> = chunk.iter().map(|(p, _)| stem(p)).collect();
        let bar = Progress::new(c, s.inv_steps - 1, &format!("invert {}", names.join(", ")));
        let x0s: Vec<&[f32]> = chunk.iter().map(|(_, x)| x.as_slice()).collect();
        let invs = eng.invert_batch(&x0s, s.inv_steps, &mut || bar.tick())?;
        for ((p, _), inv) in chunk.iter().zip(invs) {
            inverted.insert(p.clone(), inv);
        }
    }
    let t_inv = t0.elapsed();
    let inv_forwards = eng.counts.encoder;
    if pairs > 1 {
        std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create the output folder", out.display()))?;
    }
    let size = model.arch.sample_size;
    let mut results = Vec::with_capacity(pairs);
    let t1 = Instant::now();
    let all: Vec<(&PathBuf, &PathBuf)> = contents.iter().flat_map(|cp| styles.iter().map(move |sp| (cp, sp))).collect();
    for (k, chunk) in all.chunks(batch).enumerate() {
        let first = k * batch + 1;
        let what = if chunk.len() == 1 {
            format!("pair {first}/{pairs}")
        } else {
            format!("pairs {first}-{}/{pairs}", first + chunk.len() - 1)
        };
        let bar = Progress::new(c, s.gen_steps, &what);
        let styles_xt: Vec<&[f32]> = chunk.iter().map(|(_, sp)| inverted[*sp].x_t.as_slice()).collect();
        let conts: Vec<&Inversion> = chunk.iter().map(|(cp, _)| &inverted[*cp]).collect();
        let xs = eng.transfer_batch(&styles_xt, &conts, &s, mask.as_deref(), &mut || bar.tick())?;
        drop(bar);
        for ((cp, sp), x) in chunk.iter().zip(xs) {
            let file = if pairs == 1 {
                out.to_path_buf()
            } else {
                out.join(format!("content_{}_style_{}.png", stem(cp), stem(sp)))
            };
            crate::io::image::save_png(&file, &x, size, size)?;
            if let Some(d) = dump {
                write_latent(d, &x, [1, model.arch.in_channels, size, size])?;
            }
            results.push(x);
        }
    }
    if pairs > 1 {
        let st: Vec<&[f32]> = styles.iter().map(|p| inverted[p].x0.as_slice()).collect();
        let ct: Vec<&[f32]> = contents.iter().map(|p| inverted[p].x0.as_slice()).collect();
        let rs: Vec<&[f32]> = results.iter().map(|r| r.as_slice()).collect();
        let (grid, gh, gw) = crate::io::grid::authors_grid(&st, &ct, &rs, size);
        crate::io::image::save_png(&out.join("grid.png"), &grid, gh, gw)?;
    }
    if c.verbose {
        let cnt = &eng.counts;
        // An inversion step is one U-Net forward plus a DDIM update: close to the
        // forward's own time.
        let per_fwd = if inv_forwards > 0 {
            format!(" ({:.2} ms per step)", t_inv.as_secs_f64() * 1e3 / inv_forwards as f64)
        } else {
            String::new()
        };
        eprintln!(
            "inversions {:.2} s{per_fwd}, generation {:.2} s ({:.2} s per pair); encoder passes {} ({} in inversions), decoder passes {}, mixed steps {}, noisy steps {}",
            t_inv.as_secs_f64(),
            t1.elapsed().as_secs_f64(),
            t1.elapsed().as_secs_f64() / pairs as f64,
            cnt.encoder,
            inv_forwards,
            cnt.decoder,
            cnt.mixed_steps,
            cnt.noisy_steps
        );
    }
    report_device(c, be);
    Ok(())
}

/// The final latent as f32 NCHW safetensors under the key `x0`.
fn write_latent(path: &Path, x: &[f32], shape: [usize; 4]) -> Result<()> {
    crate::io::safetensors::write(path, &[Entry::f32("x0", shape.to_vec(), x)], None)
}
