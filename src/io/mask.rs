//! Local-mixing masks: an image reduced to the h-space grid, 1 = take content.

use std::path::Path;

use anyhow::{bail, Result};
use image::DynamicImage;

use crate::io::image::{center_crop_square, crop_interleaved, decode_image, decode_image_bytes};

/// Per-pixel mask value in [0, 1] (f64), row-major, with the image size.
///
/// Colour: luminance `(0.299 R + 0.587 G + 0.114 B) / max`; gray: `v / max`; both
/// multiplied by `alpha / max` when there is alpha (transparent = 0 = keep the style).
/// `max` is 255 or 65535 with the bit depth.
fn mask_values(img: &DynamicImage) -> (usize, usize, Vec<f64>) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    fn lum(r: f64, g: f64, b: f64, max: f64) -> f64 {
        (0.299 * r + 0.587 * g + 0.114 * b) / max
    }
    let v: Vec<f64> = match img {
        DynamicImage::ImageLuma8(b) => b.as_raw().iter().map(|&v| v as f64 / 255.0).collect(),
        DynamicImage::ImageLumaA8(b) => {
            b.as_raw().chunks_exact(2).map(|p| p[0] as f64 / 255.0 * (p[1] as f64 / 255.0)).collect()
        }
        DynamicImage::ImageRgb8(b) => {
            b.as_raw().chunks_exact(3).map(|p| lum(p[0] as f64, p[1] as f64, p[2] as f64, 255.0)).collect()
        }
        DynamicImage::ImageRgba8(b) => b
            .as_raw()
            .chunks_exact(4)
            .map(|p| lum(p[0] as f64, p[1] as f64, p[2] as f64, 255.0) * (p[3] as f64 / 255.0))
            .collect(),
        DynamicImage::ImageLuma16(b) => b.as_raw().iter().map(|&v| v as f64 / 65535.0).collect(),
        DynamicImage::ImageLumaA16(b) => {
            b.as_raw().chunks_exact(2).map(|p| p[0] as f64 / 65535.0 * (p[1] as f64 / 65535.0)).collect()
        }
        DynamicImage::ImageRgb16(b) => {
            b.as_raw().chunks_exact(3).map(|p| lum(p[0] as f64, p[1] as f64, p[2] as f64, 65535.0)).collect()
        }
        other => other
            .to_rgba16()
            .as_raw()
            .chunks_exact(4)
            .map(|p| lum(p[0] as f64, p[1] as f64, p[2] as f64, 65535.0) * (p[3] as f64 / 65535.0))
            .collect(),
    };
    (w, h, v)
}

/// Exact area-averaging weights from `n` input samples to `m` output cells: output `i`
/// covers `[i n / m, (i + 1) n / m)`; input `j` covers `[j, j + 1)`; the weight is the
/// overlap divided by the cell length. Returned as, per output cell, (first input,
/// weights). Overlaps are computed in integer units of `1 / m`, so they are exact.
fn area_weights(n: usize, m: usize) -> Vec<(usize, Vec<f64>)> {
    (0..m)
        .map(|i| {
            let (lo, hi) = (i * n, (i + 1) * n); // cell bounds in units of 1/m
            let first = lo / m;
            let last = hi.div_ceil(m); // exclusive
            let ws = (first..last)
                .map(|j| {
                    let overlap = hi.min((j + 1) * m).saturating_sub(lo.max(j * m));
                    overlap as f64 / n as f64
                })
                .collect();
            (first, ws)
        })
        .collect()
}

/// Loads a mask image reduced to `grid x grid` values in [0, 1] (row-major), white
/// (or opaque bright) = 1 = take content, black or transparent = 0 = keep the style.
///
/// Decode -> per-pixel value (see above) -> torchvision center crop to the shorter side
/// (as for images) -> exact area averaging to `grid x grid` (down or up).
pub fn load_mask(path: &Path, grid: usize) -> Result<Vec<f32>> {
    if grid == 0 {
        bail!("cannot load mask '{}': grid size must be positive", path.display());
    }
    Ok(reduce(&decode_image(path)?, grid))
}

/// [`load_mask`] of encoded bytes in memory (an upload); `shown` names them in errors.
pub fn load_mask_bytes(bytes: &[u8], shown: &str, grid: usize) -> Result<Vec<f32>> {
    if grid == 0 {
        bail!("cannot load mask '{shown}': grid size must be positive");
    }
    Ok(reduce(&decode_image_bytes(bytes, shown)?, grid))
}

/// A decoded mask image reduced to the `grid x grid` values (see [`load_mask`]).
fn reduce(img: &DynamicImage, grid: usize) -> Vec<f32> {
    let (w, h, vals) = mask_values(img);
    let (left, top, s) = center_crop_square(w, h);
    let sq = crop_interleaved(&vals, w, 1, left, top, s);

    let wts = area_weights(s, grid);
    // Horizontal: s rows x grid columns.
    let mut tmp = vec![0f64; s * grid];
    for y in 0..s {
        let row = &sq[y * s..(y + 1) * s];
        for (gx, (first, ws)) in wts.iter().enumerate() {
            tmp[y * grid + gx] = ws.iter().enumerate().map(|(i, &wt)| row[first + i] * wt).sum();
        }
    }
    // Vertical: grid x grid.
    let mut out = vec![0f32; grid * grid];
    for (gy, (first, ws)) in wts.iter().enumerate() {
        for gx in 0..grid {
            let v: f64 = ws.iter().enumerate().map(|(i, &wt)| tmp[(first + i) * grid + gx] * wt).sum();
            out[gy * grid + gx] = v.clamp(0.0, 1.0) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::area_weights;

    #[test]
    fn area_weights_sum_to_one() {
        for &(n, m) in &[(23usize, 8usize), (8, 8), (5, 8), (100, 7), (1, 3)] {
            for (_, ws) in area_weights(n, m) {
                let s: f64 = ws.iter().sum();
                assert!((s - 1.0).abs() < 1e-12, "{n}->{m}: {s}");
                assert!(ws.iter().all(|&w| w >= 0.0));
            }
        }
        // 3 -> 2: cell 0 = px0 + half px1, cell 1 = half px1 + px2.
        let w = area_weights(3, 2);
        assert_eq!(w[0], (0, vec![2.0 / 3.0, 1.0 / 3.0]));
        assert_eq!(w[1], (1, vec![1.0 / 3.0, 2.0 / 3.0]));
    }
}
