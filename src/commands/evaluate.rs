//! `diffstyle evaluate`: colour and edge evidence for a transfer output folder, and where
//! the right answers are known (`--truth`), how much closer to them the outputs are
//! than the contents.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use super::{check_parent, stem};

/// `diffstyle evaluate`: the colour / edge evidence (`crate::eval`) for every content x
/// style pair of a `transfer` output folder; prints a summary, writes every number to
/// `out` (JSON).
pub fn evaluate(
    contents: &[PathBuf],
    styles: &[PathBuf],
    results: &Path,
    truth: Option<&Path>,
    out: Option<&Path>,
) -> Result<()> {
    use crate::eval::{features, summarise, summarise_truth, PairScore, TruthScore};
    let truths = truth.map(|t| read_truth(t, contents, styles)).transpose()?;
    let mut truth_scores = Vec::new();
    ensure!(results.is_dir(), "{}: not a folder (give the --out folder of a multi-pair transfer)", results.display());
    if let Some(o) = out {
        check_parent(o)?;
    }
    let mut scores = Vec::new();
    let mut size = None;
    for cp in contents {
        for sp in styles {
            let file = results.join(format!("content_{}_style_{}.png", stem(cp), stem(sp)));
            ensure!(file.is_file(), "{}: missing (is it the output of this content and style?)", file.display());
            let img = crate::io::image::decode_image(&file)?;
            ensure!(img.width() == img.height(), "{}: not a square transfer output", file.display());
            let s = *size.get_or_insert(img.width() as usize);
            ensure!(
                img.width() as usize == s,
                "{}: {}x{}, the others are {s}x{s}",
                file.display(),
                img.width(),
                img.height()
            );
            let o = features(&crate::io::image::load_image(&file, s)?.data, s);
            let c = features(&crate::io::image::load_image(cp, s)?.data, s);
            let st = features(&crate::io::image::load_image(sp, s)?.data, s);
            scores.push(PairScore::new(stem(cp), stem(sp), &c, &st, &o));
            if let Some(tp) = truths.as_ref().and_then(|t| t.get(&(cp.clone(), sp.clone()))) {
                let t = features(&crate::io::image::load_image(tp, s)?.data, s);
                truth_scores.push(TruthScore::new([stem(cp), stem(sp), tp.display().to_string()], &c, &t, &o));
            }
        }
    }
    let sum = summarise(&scores);
    println!("{} pairs ({}x{} px)", sum.pairs, size.unwrap_or(0), size.unwrap_or(0));
    println!(
        "colour (histogram total variation): output to style {:.4}, to content {:.4}; closer to the style in {:.1} % of pairs",
        sum.mean_colour_to_style,
        sum.mean_colour_to_content,
        100.0 * sum.colour_from_style
    );
    println!(
        "edges (1 - correlation of Sobel maps): output to content {:.4}, to style {:.4}; closer to the content in {:.1} % of pairs",
        sum.mean_edges_to_content,
        sum.mean_edges_to_style,
        100.0 * sum.edges_from_content
    );
    println!("both hold in {:.1} % of pairs", 100.0 * sum.both);
    let truth_sum = truths.is_some().then(|| summarise_truth(&truth_scores));
    if let Some(t) = &truth_sum {
        println!("against the truth ({} pairs; each measure: output vs the content image itself):", t.pairs);
        println!(
            "  colour distance: output closer in {:.1} % of pairs, mean gain {:+.4}",
            100.0 * t.colour_closer,
            t.mean_colour_gain
        );
        println!(
            "  edge distance: output closer in {:.1} % of pairs, mean gain {:+.4}",
            100.0 * t.edges_closer,
            t.mean_edges_gain
        );
        println!(
            "  PSNR: output higher in {:.1} % of pairs; mean {:.2} dB vs {:.2} dB for the content ({:+.2} dB)",
            100.0 * t.psnr_higher,
            t.mean_psnr_output_db,
            t.mean_psnr_content_db,
            t.mean_psnr_gain_db
        );
    }
    if let Some(o) = out {
        let json =
            serde_json::json!({ "summary": sum, "pairs": scores, "truth_summary": truth_sum, "truth": truth_scores });
        crate::io::atomic::write_atomic(o, serde_json::to_string_pretty(&json)?.as_bytes())?;
        println!("wrote {}", o.display());
    }
    Ok(())
}

/// The truth file: one line per pair, `content<TAB>style<TAB>truth` (paths as given on
/// the command line; relative truth paths are relative to the file's folder; `#` lines
/// and blank lines are skipped). Every listed pair must be one of the contents x styles.
fn read_truth(file: &Path, contents: &[PathBuf], styles: &[PathBuf]) -> Result<HashMap<(PathBuf, PathBuf), PathBuf>> {
    let shown = file.display();
    let text = std::fs::read_to_string(file).with_context(|| format!("{shown}: cannot read the truth file"))?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut map = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let [c, s, t] = f[..] else {
            bail!("{shown}:{}: expected content<TAB>style<TAB>truth, got {} fields", i + 1, f.len());
        };
        let (c, s) = (PathBuf::from(c), PathBuf::from(s));
        ensure!(contents.contains(&c), "{shown}:{}: {} is not one of the --content images", i + 1, c.display());
        ensure!(styles.contains(&s), "{shown}:{}: {} is not one of the --style images", i + 1, s.display());
        let t = dir.join(t);
        ensure!(t.is_file(), "{shown}:{}: truth {} does not exist", i + 1, t.display());
        ensure!(
            map.insert((c.clone(), s.clone()), t).is_none(),
            "{shown}:{}: the pair {} / {} is listed twice",
            i + 1,
            c.display(),
            s.display()
        );
    }
    ensure!(!map.is_empty(), "{shown}: lists no pairs");
    Ok(map)
}
