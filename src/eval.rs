//! Evidence that a transfer took its content from one image and its style from the
//! other: for each (content, style, output) triple, the output's colour distribution
//! should be closer to the style image's than to the content image's, and its edge map
//! closer to the content image's than to the style image's.
//!
//! * Colour: joint RGB histogram, 8 bins per channel (512 bins), normalised to a
//!   distribution; distance = total variation, `0.5 * sum |p - q|`, in [0, 1].
//! * Edges: Sobel gradient magnitude of the luminance (BT.601 weights) inside the image
//!   (the one-pixel border is left out); distance = `1 - Pearson correlation` of the two
//!   maps, in [0, 2] (0: the same edges up to scale; a flat map counts as uncorrelated).
//!
//! Both are computed on the images as the model sees them (center-cropped and resized to
//! the output's size by the engine's own loader).
//!
//! Where the right answer is known (a dataset with the same subject in several
//! renderings: content A in rendering X, style B in rendering Y, truth A in rendering Y),
//! [`TruthScore`] asks whether the output is closer to the truth than the content image
//! itself is, by colour, by edges and by PSNR.

use serde::Serialize;

/// Bins per channel of the colour histogram.
const BINS: usize = 8;

/// What the distances are computed from, for one image.
#[derive(Clone, Debug)]
pub struct Features {
    hist: Vec<f64>,
    edges: Vec<f64>,
    /// The image as 8-bit values, CHW (for PSNR).
    pixels: Vec<u8>,
}

/// Features of a CHW RGB image in model space ([-1, 1]) of side `size`.
pub fn features(x: &[f32], size: usize) -> Features {
    let plane = size * size;
    assert_eq!(x.len(), 3 * plane, "features need a 3-channel image of side {size}");
    let pixels: Vec<u8> = x.iter().map(|&v| crate::io::image::model_to_u8(v)).collect();
    let u8_at = |c: usize, i: usize| pixels[c * plane + i];
    let mut hist = vec![0f64; BINS * BINS * BINS];
    let mut lum = vec![0f64; plane];
    for (i, l) in lum.iter_mut().enumerate() {
        let (r, g, b) = (u8_at(0, i), u8_at(1, i), u8_at(2, i));
        let bin = |v: u8| v as usize * BINS / 256;
        hist[(bin(r) * BINS + bin(g)) * BINS + bin(b)] += 1.0;
        *l = 0.299 * r as f64 + 0.587 * g as f64 + 0.114 * b as f64;
    }
    hist.iter_mut().for_each(|h| *h /= plane as f64);
    let mut edges = Vec::with_capacity(size.saturating_sub(2).pow(2));
    for y in 1..size.saturating_sub(1) {
        for x in 1..size - 1 {
            let p = |dy: usize, dx: usize| lum[(y + dy - 1) * size + (x + dx - 1)];
            let gx = (p(0, 2) + 2.0 * p(1, 2) + p(2, 2)) - (p(0, 0) + 2.0 * p(1, 0) + p(2, 0));
            let gy = (p(2, 0) + 2.0 * p(2, 1) + p(2, 2)) - (p(0, 0) + 2.0 * p(0, 1) + p(0, 2));
            edges.push((gx * gx + gy * gy).sqrt());
        }
    }
    Features { hist, edges, pixels }
}

/// PSNR in dB of two 8-bit images of the same size (capped at 100 dB for equal images).
pub fn psnr(a: &Features, b: &Features) -> f64 {
    assert_eq!(a.pixels.len(), b.pixels.len(), "psnr of images of different sizes");
    let se: f64 = a.pixels.iter().zip(&b.pixels).map(|(&p, &q)| (p as f64 - q as f64).powi(2)).sum();
    let mse = se / a.pixels.len().max(1) as f64;
    if mse == 0.0 {
        100.0
    } else {
        (10.0 * (255.0f64 * 255.0 / mse).log10()).min(100.0)
    }
}

/// Total variation between the two colour distributions, in [0, 1].
pub fn colour_distance(a: &Features, b: &Features) -> f64 {
    0.5 * a.hist.iter().zip(&b.hist).map(|(p, q)| (p - q).abs()).sum::<f64>()
}

/// `1 - Pearson correlation` of the two edge maps, in [0, 2].
pub fn edge_distance(a: &Features, b: &Features) -> f64 {
    let n = a.edges.len() as f64;
    if n == 0.0 {
        return 1.0;
    }
    let (ma, mb) = (a.edges.iter().sum::<f64>() / n, b.edges.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.edges.iter().zip(&b.edges) {
        let (dx, dy) = (x - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa == 0.0 || sbb == 0.0 {
        return 1.0;
    }
    1.0 - sab / (saa * sbb).sqrt()
}

/// The four distances of one transfer.
#[derive(Clone, Debug, Serialize)]
pub struct PairScore {
    pub content: String,
    pub style: String,
    pub colour_to_style: f64,
    pub colour_to_content: f64,
    pub edges_to_content: f64,
    pub edges_to_style: f64,
}

impl PairScore {
    pub fn new(content: String, style: String, c: &Features, s: &Features, out: &Features) -> Self {
        Self {
            content,
            style,
            colour_to_style: colour_distance(out, s),
            colour_to_content: colour_distance(out, c),
            edges_to_content: edge_distance(out, c),
            edges_to_style: edge_distance(out, s),
        }
    }
    /// The output's colours are closer to the style's than to the content's.
    pub fn colour_from_style(&self) -> bool {
        self.colour_to_style < self.colour_to_content
    }
    /// The output's edges are closer to the content's than to the style's.
    pub fn edges_from_content(&self) -> bool {
        self.edges_to_content < self.edges_to_style
    }
}

/// One transfer against its known answer: each distance from the output to the truth,
/// beside the same distance from the content image (the baseline of doing nothing).
#[derive(Clone, Debug, Serialize)]
pub struct TruthScore {
    pub content: String,
    pub style: String,
    pub truth: String,
    pub colour_output: f64,
    pub colour_content: f64,
    pub edges_output: f64,
    pub edges_content: f64,
    pub psnr_output: f64,
    pub psnr_content: f64,
}

impl TruthScore {
    pub fn new(names: [String; 3], c: &Features, truth: &Features, out: &Features) -> Self {
        let [content, style, truth_name] = names;
        Self {
            content,
            style,
            truth: truth_name,
            colour_output: colour_distance(out, truth),
            colour_content: colour_distance(c, truth),
            edges_output: edge_distance(out, truth),
            edges_content: edge_distance(c, truth),
            psnr_output: psnr(out, truth),
            psnr_content: psnr(c, truth),
        }
    }
}

/// Fractions of transfers closer to the truth than their content is, and mean gains.
#[derive(Clone, Debug, Serialize)]
pub struct TruthSummary {
    pub pairs: usize,
    /// Fraction with a smaller colour distance to the truth than the content's.
    pub colour_closer: f64,
    /// Fraction with a smaller edge distance to the truth than the content's.
    pub edges_closer: f64,
    /// Fraction with a higher PSNR against the truth than the content's.
    pub psnr_higher: f64,
    /// Mean of (content's distance - output's distance): > 0 means closer on average.
    pub mean_colour_gain: f64,
    pub mean_edges_gain: f64,
    /// Mean of (output's PSNR - content's PSNR), dB.
    pub mean_psnr_gain_db: f64,
    pub mean_psnr_output_db: f64,
    pub mean_psnr_content_db: f64,
}

pub fn summarise_truth(scores: &[TruthScore]) -> TruthSummary {
    let n = scores.len().max(1) as f64;
    let mean = |f: fn(&TruthScore) -> f64| scores.iter().map(f).sum::<f64>() / n;
    let frac = |f: fn(&TruthScore) -> bool| scores.iter().filter(|s| f(s)).count() as f64 / n;
    TruthSummary {
        pairs: scores.len(),
        colour_closer: frac(|s| s.colour_output < s.colour_content),
        edges_closer: frac(|s| s.edges_output < s.edges_content),
        psnr_higher: frac(|s| s.psnr_output > s.psnr_content),
        mean_colour_gain: mean(|s| s.colour_content - s.colour_output),
        mean_edges_gain: mean(|s| s.edges_content - s.edges_output),
        mean_psnr_gain_db: mean(|s| s.psnr_output - s.psnr_content),
        mean_psnr_output_db: mean(|s| s.psnr_output),
        mean_psnr_content_db: mean(|s| s.psnr_content),
    }
}

/// Means and fractions over a set of transfers.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub pairs: usize,
    pub mean_colour_to_style: f64,
    pub mean_colour_to_content: f64,
    pub mean_edges_to_content: f64,
    pub mean_edges_to_style: f64,
    /// Fraction of pairs whose colours are closer to the style's.
    pub colour_from_style: f64,
    /// Fraction of pairs whose edges are closer to the content's.
    pub edges_from_content: f64,
    /// Fraction of pairs for which both hold.
    pub both: f64,
}

pub fn summarise(scores: &[PairScore]) -> Summary {
    let n = scores.len().max(1) as f64;
    let mean = |f: fn(&PairScore) -> f64| scores.iter().map(f).sum::<f64>() / n;
    let frac = |f: fn(&PairScore) -> bool| scores.iter().filter(|s| f(s)).count() as f64 / n;
    Summary {
        pairs: scores.len(),
        mean_colour_to_style: mean(|s| s.colour_to_style),
        mean_colour_to_content: mean(|s| s.colour_to_content),
        mean_edges_to_content: mean(|s| s.edges_to_content),
        mean_edges_to_style: mean(|s| s.edges_to_style),
        colour_from_style: frac(PairScore::colour_from_style),
        edges_from_content: frac(PairScore::edges_from_content),
        both: frac(|s| s.colour_from_style() && s.edges_from_content()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: usize = 32;

    /// A CHW model-space image: `shape(y, x)` picks between two RGB colours.
    fn image(shape: impl Fn(usize, usize) -> bool, fg: [u8; 3], bg: [u8; 3]) -> Vec<f32> {
        let mut x = vec![0f32; 3 * S * S];
        for y in 0..S {
            for xx in 0..S {
                let c = if shape(y, xx) { fg } else { bg };
                for ch in 0..3 {
                    x[ch * S * S + y * S + xx] = c[ch] as f32 / 127.5 - 1.0;
                }
            }
        }
        x
    }

    fn disc(y: usize, x: usize) -> bool {
        let (dy, dx) = (y as f64 - 15.5, x as f64 - 15.5);
        dy * dy + dx * dx < 100.0
    }

    fn stripes(_y: usize, x: usize) -> bool {
        x % 8 < 4
    }

    #[test]
    fn distances_are_bounded_and_zero_on_equal_images() {
        let a = features(&image(disc, [200, 30, 30], [255, 255, 255]), S);
        let b = features(&image(stripes, [10, 40, 200], [250, 240, 20]), S);
        assert_eq!(colour_distance(&a, &a), 0.0);
        assert!(edge_distance(&a, &a).abs() < 1e-12);
        let (dc, de) = (colour_distance(&a, &b), edge_distance(&a, &b));
        assert!((0.0..=1.0).contains(&dc) && dc > 0.5, "colour distance {dc}");
        assert!((0.0..=2.0).contains(&de) && de > 0.5, "edge distance {de}");
        // Recolouring keeps the edges' correlation but moves the histogram all the way.
        let a2 = features(&image(disc, [20, 200, 30], [0, 0, 80]), S);
        assert!(edge_distance(&a, &a2) < 1e-9, "{}", edge_distance(&a, &a2));
        assert_eq!(colour_distance(&a, &a2), 1.0);
    }

    /// The content's shape in the style's colours passes both tests; the style's shape
    /// in the content's colours (a swapped transfer) fails both.
    #[test]
    fn a_transfer_is_told_from_a_swapped_one() {
        let (red, white, blue, yellow) = ([200, 30, 30], [255, 255, 255], [10, 40, 200], [250, 240, 20]);
        let content = features(&image(disc, red, white), S);
        let style = features(&image(stripes, blue, yellow), S);
        let good = features(&image(disc, blue, yellow), S);
        let swapped = features(&image(stripes, red, white), S);
        let g = PairScore::new("c".into(), "s".into(), &content, &style, &good);
        let w = PairScore::new("c".into(), "s".into(), &content, &style, &swapped);
        assert!(g.colour_from_style() && g.edges_from_content(), "{g:?}");
        assert!(!w.colour_from_style() && !w.edges_from_content(), "{w:?}");
        let sum = summarise(&[g, w]);
        assert_eq!((sum.pairs, sum.colour_from_style, sum.edges_from_content, sum.both), (2, 0.5, 0.5, 0.5));
    }

    /// Content = a red disc on white, truth = the disc in the style's blue on yellow: the
    /// truth itself scores best on every measure, the content's twin scores no gain, and
    /// stripes in the truth's colours gain colour but lose edges.
    #[test]
    fn truth_scores_reward_the_answer_and_nothing_else() {
        let (red, white, blue, yellow) = ([200, 30, 30], [255, 255, 255], [10, 40, 200], [250, 240, 20]);
        let content = features(&image(disc, red, white), S);
        let truth = features(&image(disc, blue, yellow), S);
        let names = || ["c".to_string(), "s".to_string(), "t".to_string()];
        let exact = TruthScore::new(names(), &content, &truth, &truth);
        assert_eq!((exact.colour_output, exact.psnr_output), (0.0, 100.0));
        assert!(exact.edges_output.abs() < 1e-12 && exact.psnr_content < 20.0, "{exact:?}");
        let same = TruthScore::new(names(), &content, &truth, &content);
        let stripes = TruthScore::new(names(), &content, &truth, &features(&image(stripes, blue, yellow), S));
        assert!(stripes.colour_output < stripes.colour_content && stripes.edges_output > stripes.edges_content);
        let sum = summarise_truth(&[exact, same, stripes]);
        assert_eq!((sum.pairs, sum.colour_closer, sum.edges_closer), (3, 2.0 / 3.0, 1.0 / 3.0));
        assert!(sum.mean_psnr_gain_db > 0.0 && sum.mean_colour_gain > 0.0, "{sum:?}");
    }
}
