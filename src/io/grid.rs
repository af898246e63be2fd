//! Image grids with torchvision `make_grid` geometry, in model space.
//!
//! The authors map images to [0, 1] with `(x + 1) * 0.5` and call `save_image`, whose
//! `make_grid` pads with 0 in [0, 1] space. Here the canvas stays in model space, so
//! the background is -1 (it saves as black).

/// Model-space value of the grid background (0 in [0, 1] space, i.e. black).
pub const BACKGROUND: f32 = -1.0;

/// Lays out equal-size CHW model-space images (3 x size x size each) like torchvision
/// `make_grid(nrow, padding, pad_value=0)` after the authors' `(x + 1) * 0.5`.
///
/// Returns `(canvas, h, w)`, the canvas CHW with 3 channels. Columns = `min(nrow, n)`,
/// rows = `ceil(n / columns)`; image k goes to row `k / nrow`, column `k % nrow`.
/// `nrow == 0` is treated as 1; no images gives a `padding x padding` background.
///
/// # Panics
/// If an image does not hold exactly `3 * size * size` values (a caller bug).
pub fn make_grid(images: &[&[f32]], size: usize, nrow: usize, padding: usize) -> (Vec<f32>, usize, usize) {
    let n = images.len();
    let plane_in = size * size;
    for (k, im) in images.iter().enumerate() {
        assert_eq!(im.len(), 3 * plane_in, "make_grid: image {k} has {} values, expected 3x{size}x{size}", im.len());
    }
    let nrow = nrow.max(1);
    let cols = nrow.min(n);
    let rows = if n == 0 { 0 } else { n.div_ceil(cols) };
    let cell = size + padding;
    let h = rows * cell + padding;
    let w = cols * cell + padding;
    let plane = h * w;
    let mut canvas = vec![BACKGROUND; 3 * plane];
    for (k, im) in images.iter().enumerate() {
        let (r, c) = (k / cols, k % cols);
        let (oy, ox) = (padding + r * cell, padding + c * cell);
        for ch in 0..3 {
            for y in 0..size {
                let src = &im[ch * plane_in + y * size..ch * plane_in + (y + 1) * size];
                let dst = ch * plane + (oy + y) * w + ox;
                canvas[dst..dst + size].copy_from_slice(src);
            }
        }
    }
    (canvas, h, w)
}

/// The authors' result grid: `nrow = n_styles + 1`, padding 1.
///
/// Row 0: a blank cell (model-space zeros, mid grey) followed by the styles. Then one
/// row per content image: the content followed by its results, where `results` is
/// content-major (`results[c * n_styles + s]`).
///
/// # Panics
/// If `results.len() != contents.len() * styles.len()` or an image has the wrong length.
pub fn authors_grid(
    styles: &[&[f32]],
    contents: &[&[f32]],
    results: &[&[f32]],
    size: usize,
) -> (Vec<f32>, usize, usize) {
    let ns = styles.len();
    assert_eq!(
        results.len(),
        contents.len() * ns,
        "authors_grid: expected {} results ({} contents x {} styles), got {}",
        contents.len() * ns,
        contents.len(),
        ns,
        results.len()
    );
    let blank = vec![0f32; 3 * size * size];
    let mut cells: Vec<&[f32]> = Vec::with_capacity((contents.len() + 1) * (ns + 1));
    cells.push(&blank);
    cells.extend_from_slice(styles);
    for (c, content) in contents.iter().enumerate() {
        cells.push(content);
        cells.extend_from_slice(&results[c * ns..(c + 1) * ns]);
    }
    make_grid(&cells, size, ns + 1, 1)
}

/// Cells of a sweep grid are drawn at least this many pixels wide, so that a label fits.
const SWEEP_MIN_CELL: usize = 64;

/// A knob sweep's grid: a header row (`corner` above the content and style columns,
/// then each value's `labels`), then one row per pair: content, style, and the pair's
/// result for each value (`results[pair][value]`). Images are enlarged by pixel
/// repetition to at least [`SWEEP_MIN_CELL`] pixels; labels are white on the black
/// background. Returns `(canvas, h, w)` like [`make_grid`].
///
/// # Panics
/// If a pair has not one result per label, or an image has the wrong length.
pub fn sweep_grid(
    pairs: &[[&[f32]; 2]],
    results: &[Vec<&[f32]>],
    labels: &[String],
    corner: &str,
    size: usize,
) -> (Vec<f32>, usize, usize) {
    use super::font::{draw_text, text_width, GLYPH_H};
    assert_eq!(pairs.len(), results.len(), "sweep_grid: one result row per pair");
    let scale = SWEEP_MIN_CELL.div_ceil(size.max(1)).max(1);
    let cell = size * scale;
    let enlarge = |im: &[f32]| -> Vec<f32> {
        assert_eq!(im.len(), 3 * size * size, "sweep_grid: image of the wrong size");
        let mut out = vec![0f32; 3 * cell * cell];
        for ch in 0..3 {
            for y in 0..cell {
                for x in 0..cell {
                    out[ch * cell * cell + y * cell + x] = im[ch * size * size + (y / scale) * size + x / scale];
                }
            }
        }
        out
    };
    let cols = 2 + labels.len();
    let mut big: Vec<Vec<f32>> = Vec::with_capacity(pairs.len() * cols);
    for (pair, row) in pairs.iter().zip(results) {
        assert_eq!(row.len(), labels.len(), "sweep_grid: one result per value");
        big.extend(pair.iter().chain(row).map(|im| enlarge(im)));
    }
    let refs: Vec<&[f32]> = big.iter().map(|v| v.as_slice()).collect();
    let (body, bh, w) = make_grid(&refs, cell, cols, 1);
    // Header: one line of text, centred in each value's column.
    let head = GLYPH_H + 6;
    let h = head + bh;
    let mut canvas = vec![BACKGROUND; 3 * h * w];
    for ch in 0..3 {
        for y in 0..bh {
            let src = &body[ch * bh * w + y * w..ch * bh * w + (y + 1) * w];
            canvas[ch * h * w + (head + y) * w..ch * h * w + (head + y + 1) * w].copy_from_slice(src);
        }
    }
    let pitch = cell + 1;
    let centred =
        |col: usize, span: usize, text: &str| 1 + col * pitch + (span * pitch).saturating_sub(text_width(text)) / 2;
    draw_text(&mut canvas, h, w, centred(0, 2, corner), 3, 1, corner, 1.0);
    for (k, l) in labels.iter().enumerate() {
        draw_text(&mut canvas, h, w, centred(2 + k, 1, l), 3, 1, l, 1.0);
    }
    (canvas, h, w)
}
