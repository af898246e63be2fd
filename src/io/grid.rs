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
