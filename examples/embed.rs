//! Embedding diffstyle in a Rust program: load a model once into a `Pipeline`, invert a
//! style once, then run transfers (one, and a batch) against it; then submit requests
//! with their own knobs from two threads (they share the engine's steps), follow one's
//! progress, and cancel another midway.
//!
//!     cargo run --release --example embed -- [MODEL] [OUT_DIR]
//!
//! MODEL defaults to the tiny test model (tests/fixtures/method/model), OUT_DIR to
//! target/embed.

use std::path::PathBuf;

use anyhow::Result;
use diffstyle::diffusion::method::Preset;
use diffstyle::pipeline::{
    Cancelled, DeviceChoice, Knobs, ModelSource, Pair, Pipeline, PipelineOptions, Request, Source,
};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "tests/fixtures/method/model".into());
    let out = PathBuf::from(args.next().unwrap_or_else(|| "target/embed".into()));
    std::fs::create_dir_all(&out)?;

    // Once per process: weights uploaded, the step scheduler's engine (up to 2 jobs per
    // step) allocated.
    let opts = PipelineOptions { device: DeviceChoice::Auto, max_batch: 2, cache_mib: 256, ..Default::default() };
    let p = Pipeline::load(&ModelSource::path(&model), &opts)?;
    println!("{} on {}", p.info().source, p.info().device);

    // Knobs as a user would give them: a preset and overrides by name.
    let mut knobs = Knobs { preset: Some(Preset::Fast), ..Default::default() };
    knobs.set("gamma", "0.4")?;
    let s = knobs.settings();

    let style = p.image_from_path("examples/style.png".as_ref())?;
    let content = p.image_from_path("examples/content.png".as_ref())?;
    // The style's inversion, cached under an id; later transfers find it there.
    let style_inv = p.invert(&style, s.inv_steps)?;
    println!("style inverted: id {}", p.inversion_id(&style, s.inv_steps));

    let one = p.transfer(&Source::Image(content.clone()), &Source::Inversion(style_inv.clone()), &s, None)?;
    one.save_png(&out.join("one.png"))?;

    // A batch: the content and its mirror image, both with the cached style.
    let mut mirrored = content.x0.to_vec();
    let n = p.info().sample_size;
    for row in mirrored.chunks_mut(n) {
        row.reverse();
    }
    let pairs = [
        Pair { content: Source::Image(content), style: Source::Image(style.clone()) },
        Pair {
            content: Source::Inversion(p.invert(&p.image_from_model_space(mirrored)?, s.inv_steps)?),
            style: Source::Image(style),
        },
    ];
    let mut steps = 0;
    let outs = p.transfer_batch(&pairs, &s, None, &mut || steps += 1)?;
    for (k, o) in outs.iter().enumerate() {
        o.save_png(&out.join(format!("batch_{k}.png")))?;
    }
    assert_eq!(outs[0].x, one.x, "a pair in a batch gives the same pixels as alone");

    // Requests submitted without waiting: each with its own knobs; they join the
    // running batch between steps. A ticket yields progress, then the answer.
    let pair = Pair { content: pairs[0].content.clone(), style: Source::Inversion(style_inv.clone()) };
    let mut other = knobs.clone();
    other.set("gamma", "0.8")?;
    let long = Request::Transfer { pair: pair.clone(), settings: Preset::InDomain.settings(), mask: None };
    let short = Request::Transfer { pair, settings: other.settings(), mask: None };
    let (long, short) = (p.submit(long)?, p.submit(short)?);
    let cancel = long.canceller();
    let shown = std::thread::scope(|sc| {
        sc.spawn(move || {
            // The long request is given up once the short one is done; dropping its
            // ticket would cancel it too.
            let r = long.wait(&mut |_, _| {});
            assert!(r.is_err_and(|e| e.downcast_ref::<Cancelled>().is_some()));
        });
        let mut shown = 0;
        let o = short.wait(&mut |done, total| {
            if done * 4 / total > shown {
                shown = done * 4 / total;
                println!("short request: {done}/{total} steps");
            }
        });
        cancel.cancel();
        o
    })?;
    shown.into_output()?.save_png(&out.join("submitted.png"))?;
    println!("{} requests cancelled", p.cancelled());
    let c = p.cache_stats();
    println!(
        "wrote {} images to {}; {steps} engine steps in the batch; cache: {} hits, {} misses, {} inversions held",
        2 + outs.len(),
        out.display(),
        c.hits,
        c.misses,
        c.entries
    );
    Ok(())
}
