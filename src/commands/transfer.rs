//! `diffstyle transfer`: every content x style pair, inverted (or read from caches)
//! and generated in batches through a [`Pipeline`]; one PNG per pair and the authors'
//! grid.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use super::{check_parent, model, pipeline_options, report_pipeline, stem, Common, ModelArgs, Progress};
use crate::diffusion::method::Inversion;
use crate::io::cache;
use crate::io::safetensors::Entry;
use crate::pipeline::{Image, Knobs, Pair, Pipeline, Source};

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
    // No larger than the work: a batch slot without a pair would only be padding. The
    // engine is built before any input is decoded at the model's resolution, so that an
    // architecture too large for memory is an error naming the model.
    let batch = batch.min(pairs);
    let source = model.source.clone();
    let p = Pipeline::new(model, &pipeline_options(c, batch))
        .with_context(|| format!("model {source} with --batch {batch}"))?;
    // Every input is read and checked before any compute.
    let mut inputs: HashMap<&PathBuf, Source> = HashMap::new();
    for path in contents.iter().chain(styles) {
        if !inputs.contains_key(path) {
            let src = if cache::is_cache(path) {
                Source::Inversion(p.load_inversion(path, s.inv_steps)?)
            } else {
                Source::Image(p.image_from_path(path)?)
            };
            inputs.insert(path, src);
        }
    }
    let mask = mask.map(|path| p.mask_from_path(path)).transpose()?;

    let t0 = Instant::now();
    let mut inverted: HashMap<&PathBuf, Arc<Inversion>> = HashMap::new();
    let mut to_invert: Vec<(&PathBuf, &Image)> = vec![];
    for (path, src) in &inputs {
        match src {
            Source::Inversion(inv) => drop(inverted.insert(path, inv.clone())),
            Source::Image(im) => to_invert.push((path, im)),
        }
    }
    to_invert.sort_by_key(|(path, _)| *path);
    for chunk in to_invert.chunks(batch) {
        let names: Vec<String> = chunk.iter().map(|(path, _)| stem(path)).collect();
        let bar = Progress::new(c, s.inv_steps - 1, &format!("invert {}", names.join(", ")));
        let ims: Vec<&Image> = chunk.iter().map(|(_, im)| *im).collect();
        let invs = p.invert_batch(&ims, s.inv_steps, &mut || bar.tick())?;
        for ((path, _), inv) in chunk.iter().zip(invs) {
            inverted.insert(path, inv);
        }
    }
    let t_inv = t0.elapsed();
    let inv_forwards = p.counts().encoder;
    if pairs > 1 {
        std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create the output folder", out.display()))?;
    }
    let size = p.info().sample_size;
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
        let work: Vec<Pair> = chunk
            .iter()
            .map(|(cp, sp)| Pair {
                content: Source::Inversion(inverted[cp].clone()),
                style: Source::Inversion(inverted[sp].clone()),
            })
            .collect();
        let xs = p.transfer_batch(&work, &s, mask.as_ref(), &mut || bar.tick())?;
        drop(bar);
        for ((cp, sp), x) in chunk.iter().zip(xs) {
            let file = if pairs == 1 {
                out.to_path_buf()
            } else {
                out.join(format!("content_{}_style_{}.png", stem(cp), stem(sp)))
            };
            x.save_png(&file)?;
            if let Some(d) = dump {
                write_latent(d, &x.x, [1, p.info().in_channels, size, size])?;
            }
            results.push(x.x);
        }
    }
    if pairs > 1 {
        let st: Vec<&[f32]> = styles.iter().map(|path| inverted[path].x0.as_slice()).collect();
        let ct: Vec<&[f32]> = contents.iter().map(|path| inverted[path].x0.as_slice()).collect();
        let rs: Vec<&[f32]> = results.iter().map(|r| r.as_slice()).collect();
        let (grid, gh, gw) = crate::io::grid::authors_grid(&st, &ct, &rs, size);
        crate::io::image::save_png(&out.join("grid.png"), &grid, gh, gw)?;
    }
    if c.verbose {
        let cnt = p.counts();
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
    report_pipeline(c, &p);
    Ok(())
}

/// The final latent as f32 NCHW safetensors under the key `x0`.
fn write_latent(path: &Path, x: &[f32], shape: [usize; 4]) -> Result<()> {
    crate::io::safetensors::write(path, &[Entry::f32("x0", shape.to_vec(), x)], None)
}
