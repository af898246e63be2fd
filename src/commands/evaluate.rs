//! `diffstyle evaluate`: colour and edge evidence for a transfer output folder.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};

use super::{check_parent, stem};

/// `diffstyle evaluate`: the colour / edge evidence (`crate::eval`) for every content x
/// style pair of a `transfer` output folder; prints a summary, writes every number to
/// `out` (JSON).
pub fn evaluate(contents: &[PathBuf], styles: &[PathBuf], results: &Path, out: Option<&Path>) -> Result<()> {
    use crate::eval::{features, summarise, PairScore};
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
    if let Some(o) = out {
        let json = serde_json::json!({ "summary": sum, "pairs": scores });
        crate::io::atomic::write_atomic(o, serde_json::to_string_pretty(&json)?.as_bytes())?;
        println!("wrote {}", o.display());
    }
    Ok(())
}
