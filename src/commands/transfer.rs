//! `diffstyle transfer`: every content x style pair, inverted (or read from caches)
//! and generated in batches through a [`Pipeline`]; one PNG per pair and the authors'
//! grid. With `--sweep`, the generation runs once per knob value on the same
//! inversions, into one folder per value, with a labelled grid and the colour / edge
//! figures per value.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use super::{
    check_parent, check_recommended, model, pipeline_options, recommended, report_pipeline, stem, Common, ModelArgs,
    Progress,
};
use crate::diffusion::method::{Inversion, Settings};
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
    /// `KNOB=V1,V2,...` each; empty = one run with `knobs`.
    pub sweep: &'a [String],
}

/// One generation run of a sweep: its folder name (`gamma=0.4,t_edit=300`), its column
/// label (`0.4,300`) and its settings.
struct Run {
    dir: String,
    label: String,
    settings: Settings,
}

/// The runs of `--sweep` over `base` (the knobs after the model's recommendation): every
/// combination of the values, the first knob varying slowest. Errors name the knob.
fn sweep_runs(base: &Knobs, sweep: &[String]) -> Result<(Vec<Run>, String)> {
    let mut axes: Vec<(String, Vec<String>)> = vec![];
    for item in sweep {
        let (name, values) = item
            .split_once('=')
            .with_context(|| format!("--sweep {item:?}: expected KNOB=V1,V2,... (e.g. gamma=0.2,0.4)"))?;
        let name = name.trim().replace('-', "_");
        ensure!(Knobs::is_knob(&name), "--sweep {item:?}: '{name}' is not a knob");
        ensure!(
            name != "preset" && name != "inv_steps",
            "--sweep {name}: a sweep shares one set of inversions, so it cannot vary {name}"
        );
        ensure!(!axes.iter().any(|(n, _)| *n == name), "--sweep {name} is given twice");
        let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
        ensure!(values.iter().all(|v| !v.is_empty()), "--sweep {item:?}: an empty value");
        axes.push((name, values));
    }
    let mut runs = vec![(base.clone(), vec![], vec![])];
    for (name, values) in &axes {
        let mut next = vec![];
        for (k, dirs, labels) in &runs {
            for v in values {
                let mut k: Knobs = k.clone();
                k.set(name, v).map_err(|e| anyhow::anyhow!("--sweep {name}: {}", e.problem))?;
                let mut d: Vec<String> = dirs.clone();
                d.push(format!("{name}={v}"));
                let mut l: Vec<String> = labels.clone();
                l.push(v.clone());
                next.push((k, d, l));
            }
        }
        runs = next;
    }
    let corner = axes.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(",");
    let runs = runs
        .into_iter()
        .map(|(k, d, l)| Run { dir: d.join(","), label: l.join(","), settings: k.settings() })
        .collect();
    Ok((runs, corner))
}

pub fn transfer(c: &Common, m: &ModelArgs, job: &TransferJob) -> Result<()> {
    let TransferJob { contents, styles, out, mask, dump, knobs, batch, sweep } = *job;
    ensure!(batch >= 1, "--batch must be at least 1");
    let rec = recommended(m)?;
    let base = knobs.over(rec.as_ref());
    let (runs, corner) = sweep_runs(&base, sweep)?;
    let model = model(m)?;
    check_recommended(m, rec.as_ref(), &model.schedule)?;
    for r in &runs {
        r.settings.validate(&model.schedule).with_context(|| {
            if sweep.is_empty() {
                "the knobs".to_string()
            } else {
                format!("sweep run {}", r.dir)
            }
        })?;
    }
    let s = runs[0].settings.clone();
    let pairs = contents.len() * styles.len();
    ensure!(
        dump.is_none() || (pairs == 1 && sweep.is_empty()),
        "--dump-tensor needs exactly one content and one style, and no --sweep"
    );
    let folder = pairs > 1 || !sweep.is_empty();
    if !folder {
        check_parent(out)?;
    } else {
        ensure!(!out.is_file(), "{}: with {pairs} pairs or a sweep --out must be a folder, not a file", out.display());
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
    if folder {
        std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create the output folder", out.display()))?;
    }
    let size = p.info().sample_size;
    let t1 = Instant::now();
    let all: Vec<(&PathBuf, &PathBuf)> = contents.iter().flat_map(|cp| styles.iter().map(move |sp| (cp, sp))).collect();
    let mut per_run: Vec<Vec<Vec<f32>>> = Vec::with_capacity(runs.len());
    for run in &runs {
        let dir = if sweep.is_empty() { out.to_path_buf() } else { out.join(&run.dir) };
        if !sweep.is_empty() {
            std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create the folder", dir.display()))?;
        }
        let run_name = if sweep.is_empty() { String::new() } else { format!("{}: ", run.dir) };
        let results = generate(c, &p, &all, &inverted, &run.settings, mask.as_ref(), batch, &run_name, &|cp, sp| {
            if folder {
                dir.join(format!("content_{}_style_{}.png", stem(cp), stem(sp)))
            } else {
                out.to_path_buf()
            }
        })?;
        if let (Some(d), [x]) = (dump, results.as_slice()) {
            write_latent(d, x, [1, p.info().in_channels, size, size])?;
        }
        if pairs > 1 {
            let st: Vec<&[f32]> = styles.iter().map(|path| inverted[path].x0.as_slice()).collect();
            let ct: Vec<&[f32]> = contents.iter().map(|path| inverted[path].x0.as_slice()).collect();
            let rs: Vec<&[f32]> = results.iter().map(|r| r.as_slice()).collect();
            let (grid, gh, gw) = crate::io::grid::authors_grid(&st, &ct, &rs, size);
            crate::io::image::save_png(&dir.join("grid.png"), &grid, gh, gw)?;
        }
        per_run.push(results);
    }
    if !sweep.is_empty() {
        write_sweep(out, &all, &inverted, &runs, &per_run, &corner, size)?;
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
        let gens = (pairs * runs.len()) as f64;
        eprintln!(
            "inversions {:.2} s{per_fwd}, generation {:.2} s ({:.2} s per pair); encoder passes {} ({} in inversions), decoder passes {}, mixed steps {}, noisy steps {}",
            t_inv.as_secs_f64(),
            t1.elapsed().as_secs_f64(),
            t1.elapsed().as_secs_f64() / gens,
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

/// Generates every pair of `all` with settings `s` in batches, writing each result to
/// `file(content, style)`; returns the final latents in pair order.
#[allow(clippy::too_many_arguments)]
fn generate(
    c: &Common,
    p: &Pipeline,
    all: &[(&PathBuf, &PathBuf)],
    inverted: &HashMap<&PathBuf, Arc<Inversion>>,
    s: &Settings,
    mask: Option<&crate::pipeline::Mask>,
    batch: usize,
    run_name: &str,
    file: &dyn Fn(&Path, &Path) -> PathBuf,
) -> Result<Vec<Vec<f32>>> {
    let pairs = all.len();
    let mut results = Vec::with_capacity(pairs);
    for (k, chunk) in all.chunks(batch).enumerate() {
        let first = k * batch + 1;
        let what = if chunk.len() == 1 {
            format!("{run_name}pair {first}/{pairs}")
        } else {
            format!("{run_name}pairs {first}-{}/{pairs}", first + chunk.len() - 1)
        };
        let bar = Progress::new(c, s.gen_steps, &what);
        let work: Vec<Pair> = chunk
            .iter()
            .map(|(cp, sp)| Pair {
                content: Source::Inversion(inverted[cp].clone()),
                style: Source::Inversion(inverted[sp].clone()),
            })
            .collect();
        let xs = p.transfer_batch(&work, s, mask, &mut || bar.tick())?;
        drop(bar);
        for ((cp, sp), x) in chunk.iter().zip(xs) {
            x.save_png(&file(cp, sp))?;
            results.push(x.x);
        }
    }
    Ok(results)
}

/// A sweep's summary: `sweep.png` (a row per pair: content, style, one labelled column per
/// run) and `sweep.json` (each run's settings and the colour / edge figures of
/// `evaluate` over its pairs), printed as a table too.
fn write_sweep(
    out: &Path,
    all: &[(&PathBuf, &PathBuf)],
    inverted: &HashMap<&PathBuf, Arc<Inversion>>,
    runs: &[Run],
    per_run: &[Vec<Vec<f32>>],
    corner: &str,
    size: usize,
) -> Result<()> {
    use crate::eval::{features, summarise, PairScore};
    let inputs: Vec<[&[f32]; 2]> =
        all.iter().map(|(cp, sp)| [inverted[cp].x0.as_slice(), inverted[sp].x0.as_slice()]).collect();
    let rows: Vec<Vec<&[f32]>> = (0..all.len()).map(|i| per_run.iter().map(|r| r[i].as_slice()).collect()).collect();
    let labels: Vec<String> = runs.iter().map(|r| r.label.clone()).collect();
    let (grid, gh, gw) = crate::io::grid::sweep_grid(&inputs, &rows, &labels, corner, size);
    crate::io::image::save_png(&out.join("sweep.png"), &grid, gh, gw)?;
    let feats: Vec<[crate::eval::Features; 2]> =
        inputs.iter().map(|[c, s]| [features(c, size), features(s, size)]).collect();
    println!("{:<28} {:>18} {:>18} {:>8}", corner, "colours from style", "edges from content", "both");
    let mut json = vec![];
    for (run, results) in runs.iter().zip(per_run) {
        let scores: Vec<PairScore> = all
            .iter()
            .zip(&feats)
            .zip(results)
            .map(|(((cp, sp), [fc, fs]), x)| PairScore::new(stem(cp), stem(sp), fc, fs, &features(x, size)))
            .collect();
        let sum = summarise(&scores);
        println!(
            "{:<28} {:>17.1}% {:>17.1}% {:>7.1}%",
            run.dir,
            100.0 * sum.colour_from_style,
            100.0 * sum.edges_from_content,
            100.0 * sum.both
        );
        json.push(serde_json::json!({ "run": run.dir, "settings": run.settings, "summary": sum, "pairs": scores }));
    }
    let doc = serde_json::json!({ "sweep": corner, "runs": json });
    crate::io::atomic::write_atomic(&out.join("sweep.json"), serde_json::to_string_pretty(&doc)?.as_bytes())?;
    println!("wrote {}, {}", out.join("sweep.png").display(), out.join("sweep.json").display());
    Ok(())
}

/// The final latent as f32 NCHW safetensors under the key `x0`.
fn write_latent(path: &Path, x: &[f32], shape: [usize; 4]) -> Result<()> {
    crate::io::safetensors::write(path, &[Entry::f32("x0", shape.to_vec(), x)], None)
}
