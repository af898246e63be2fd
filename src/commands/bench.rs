//! `diffstyle bench`: the benchmark driver (`crate::bench` does the measuring).

use anyhow::{ensure, Context, Result};

use super::{model, on_backend, Common, ModelArgs};

/// `diffstyle bench`: every measurement of `crate::bench` for each precision (a fresh
/// backend each), written to `<out_dir>/ours.json` with the inputs and outputs the
/// baselines are checked against.
pub fn bench(c: &Common, m: &ModelArgs, o: &crate::bench::BenchOpts) -> Result<()> {
    use crate::bench::{run_on, write_f32, Inputs};
    ensure!(!o.precisions.is_empty(), "--precisions is empty");
    let model = model(m)?;
    let size = model.arch.sample_size;
    for p in [&o.content, &o.style] {
        ensure!(p.is_file(), "{}: no such image", p.display());
    }
    let inputs = Inputs {
        content: crate::io::image::load_image(&o.content, size)?.data,
        style: crate::io::image::load_image(&o.style, size)?.data,
    };
    std::fs::create_dir_all(&o.out_dir)
        .with_context(|| format!("{}: cannot create the output folder", o.out_dir.display()))?;
    write_f32(&o.out_dir.join("content_x0.f32"), &inputs.content)?;
    write_f32(&o.out_dir.join("style_x0.f32"), &inputs.style)?;
    let sample_len = model.arch.in_channels * size * size;
    write_f32(&o.out_dir.join("x_b1.f32"), &crate::bench::random_x(1, sample_len))?;

    let mut log = |s: &str| {
        if !c.quiet {
            eprintln!("{s}");
        }
    };
    let mut results = Vec::new();
    for &precision in &o.precisions {
        let cp = Common { device: c.device, precision, quiet: c.quiet, verbose: c.verbose, threads: c.threads };
        let r = on_backend!(&cp, |be| run_on(be, &model, precision, &inputs, o, &mut log))
            .with_context(|| format!("bench in {}", precision.name()))?;
        results.push((precision.name(), r));
        // After every precision: a run cut short keeps what it measured.
        let json = crate::bench::report_json(&model, o, &results);
        crate::io::atomic::write_atomic(&o.out_dir.join("ours.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    }

    let out = o.out_dir.join("ours.json");

    println!("device: {}", crate::bench::device_only(&results[0].1.device));
    println!(
        "{:<6} {:>5} {:>11} {:>11} {:>11} {:>9}",
        "prec", "batch", "forward ms", "encoder ms", "decoder ms", "TFLOP/s"
    );
    for (_, r) in &results {
        for ((f, e), d) in r.forward.iter().zip(&r.encoder).zip(&r.decoder) {
            println!(
                "{:<6} {:>5} {:>11.3} {:>11.3} {:>11.3} {:>9.3}",
                f.precision, f.batch, f.ms, e.ms, d.ms, f.tflops
            );
        }
    }
    for (_, r) in &results {
        for p in &r.pair {
            println!("{:<6} pair {:<10} {:>8.3} s (first {:.3} s)", p.precision, p.preset, p.s, p.s_first);
        }
        for t in &r.throughput {
            println!("{:<6} {} pairs ({}) {:.3} s = {:.2} pairs/s", t.precision, t.batch, t.preset, t.s, t.pairs_per_s);
        }
        if let Some(b) = r.peak_pair_bytes.or(r.peak_bytes) {
            println!("{:<6} peak device memory {:.1} MiB", r.precision, b as f64 / 1048576.0);
        }
    }
    println!("wrote {}", out.display());
    Ok(())
}
