//! Image decoding, the authors' torchvision preprocessing, and PNG output.
//!
//! The pipeline of [`load_image`] reproduces, bit for bit, what the authors get from
//! `Image.open(p).convert('RGB')` -> `CenterCrop(min(w, h))` -> `Resize((S, S))`
//! (PIL bilinear, antialiased) -> `ToTensor()` -> `Normalize(0.5, 0.5)`, with a few
//! well-defined extensions PIL's `convert('RGB')` does not offer: alpha is composited
//! on white and 16-bit samples are scaled (not clipped) to 8 bits.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use image::{DynamicImage, ImageError, ImageFormat};

use crate::io::atomic::write_atomic;
use crate::tensor::HostTensor;

/// Reads and decodes a PNG, JPEG or WebP file (any size, bit depth, channel count).
///
/// The format is detected from the file's content, not its extension. Every error names
/// the file and says what is wrong: not found, unreadable, empty, not an image /
/// unsupported format, corrupt or truncated data, zero size.
pub fn decode_image(path: &Path) -> Result<DynamicImage> {
    decode_image_bytes(&read_image_file(path)?, &path.display().to_string())
}

/// The bytes of an image file, with an error naming the file when it cannot be read.
fn read_image_file(path: &Path) -> Result<Vec<u8>> {
    let shown = path.display();
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => anyhow!("cannot read image '{shown}': file not found"),
        ErrorKind::PermissionDenied => {
            anyhow!("cannot read image '{shown}': unreadable (permission denied)")
        }
        _ => anyhow!("cannot read image '{shown}': unreadable ({e})"),
    })?;
    if meta.is_dir() {
        bail!("cannot read image '{shown}': it is a directory, not an image file");
    }
    fs::read(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => anyhow!("cannot read image '{shown}': file not found"),
        ErrorKind::PermissionDenied => {
            anyhow!("cannot read image '{shown}': unreadable (permission denied)")
        }
        _ => anyhow!("cannot read image '{shown}': unreadable ({e})"),
    })
}

/// [`decode_image`] of bytes already in memory (an upload); `shown` names them in errors.
pub fn decode_image_bytes(bytes: &[u8], shown: &str) -> Result<DynamicImage> {
    if bytes.is_empty() {
        bail!("cannot decode image '{shown}': the file is empty (0 bytes), not an image");
    }
    let format = image::guess_format(bytes).map_err(|_| {
        anyhow!(
            "cannot decode image '{shown}': not an image or unsupported format \
             (the content is not PNG, JPEG or WebP data)"
        )
    })?;
    let name = match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::WebP => "WebP",
        other => bail!(
            "cannot decode image '{shown}': unsupported image format {other:?} \
             (supported: PNG, JPEG, WebP)"
        ),
    };
    if let Some((w, h)) = png_header_size(bytes).filter(|_| format == ImageFormat::Png) {
        if w == 0 || h == 0 {
            bail!("cannot decode image '{shown}': zero size ({w}x{h}) in the PNG header");
        }
    }
    let img = image::load_from_memory_with_format(bytes, format).map_err(|e| match e {
        ImageError::Decoding(d) => {
            anyhow!("cannot decode image '{shown}': corrupt or truncated {name} data ({d})")
        }
        ImageError::IoError(io) if io.kind() == ErrorKind::UnexpectedEof => {
            anyhow!("cannot decode image '{shown}': truncated {name} data (unexpected end of file)")
        }
        ImageError::IoError(io) => {
            anyhow!("cannot decode image '{shown}': corrupt or truncated {name} data ({io})")
        }
        ImageError::Limits(l) => {
            anyhow!("cannot decode image '{shown}': image too large to decode ({l})")
        }
        ImageError::Unsupported(u) => {
            anyhow!("cannot decode image '{shown}': unsupported {name} variant ({u})")
        }
        other => anyhow!("cannot decode image '{shown}': invalid {name} data ({other})"),
    })?;
    if img.width() == 0 || img.height() == 0 {
        bail!("cannot use image '{shown}': zero size ({}x{})", img.width(), img.height());
    }
    Ok(img)
}

/// Width and height from a PNG's IHDR chunk, when the bytes hold one.
fn png_header_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    Some((be(16), be(20)))
}

/// 16-bit sample to 8 bits: `round(v * 255 / 65535)` (never a tie, so the rounding mode
/// does not matter).
#[inline]
pub fn u16_to_u8(v: u16) -> u8 {
    ((v as u32 * 255 + 32767) / 65535) as u8
}

/// Composites colour `c` with alpha `a` (both 8-bit) on white:
/// `round(c * a/255 + 255 * (1 - a/255))`.
#[inline]
pub fn over_white(c: u8, a: u8) -> u8 {
    let af = a as f64 / 255.0;
    let v = c as f64 * af + 255.0 * (1.0 - af);
    v.round().clamp(0.0, 255.0) as u8
}

/// Converts a decoded image to interleaved RGB8: alpha composited on white, grayscale
/// replicated, 16-bit scaled to 8-bit (before compositing). Returns `(width, height, rgb)`.
pub fn to_rgb8_on_white(img: &DynamicImage) -> (usize, usize, Vec<u8>) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = Vec::with_capacity(w * h * 3);
    match img {
        DynamicImage::ImageRgb8(b) => out.extend_from_slice(b.as_raw()),
        DynamicImage::ImageLuma8(b) => {
            for &v in b.as_raw() {
                out.extend_from_slice(&[v, v, v]);
            }
        }
        DynamicImage::ImageLumaA8(b) => {
            for p in b.as_raw().chunks_exact(2) {
                let v = over_white(p[0], p[1]);
                out.extend_from_slice(&[v, v, v]);
            }
        }
        DynamicImage::ImageRgba8(b) => {
            for p in b.as_raw().chunks_exact(4) {
                let a = p[3];
                out.extend_from_slice(&[over_white(p[0], a), over_white(p[1], a), over_white(p[2], a)]);
            }
        }
        DynamicImage::ImageLuma16(b) => {
            for &v in b.as_raw() {
                let v = u16_to_u8(v);
                out.extend_from_slice(&[v, v, v]);
            }
        }
        DynamicImage::ImageLumaA16(b) => {
            for p in b.as_raw().chunks_exact(2) {
                let v = over_white(u16_to_u8(p[0]), u16_to_u8(p[1]));
                out.extend_from_slice(&[v, v, v]);
            }
        }
        DynamicImage::ImageRgb16(b) => out.extend(b.as_raw().iter().map(|&v| u16_to_u8(v))),
        other => {
            // RGBA16 and anything else (float images cannot come from PNG/JPEG/WebP):
            // go through 16-bit RGBA.
            let b = other.to_rgba16();
            for p in b.as_raw().chunks_exact(4) {
                let a = u16_to_u8(p[3]);
                out.extend_from_slice(&[
                    over_white(u16_to_u8(p[0]), a),
                    over_white(u16_to_u8(p[1]), a),
                    over_white(u16_to_u8(p[2]), a),
                ]);
            }
        }
    }
    (w, h, out)
}

/// Python's `round` (ties to even) of `d / 2`, for a non-negative integer `d`.
#[inline]
fn half_round_even(d: usize) -> usize {
    let k = d / 2;
    if d % 2 == 1 && k % 2 == 1 {
        k + 1
    } else {
        k
    }
}

/// torchvision `CenterCrop(min(w, h))` geometry: `(left, top, side)` with
/// `top = round((h - s) / 2.0)`, `left = round((w - s) / 2.0)` (banker's rounding).
pub fn center_crop_square(w: usize, h: usize) -> (usize, usize, usize) {
    let s = w.min(h);
    (half_round_even(w - s), half_round_even(h - s), s)
}

/// Copies the `side x side` window at `(left, top)` of an interleaved image with `c`
/// channels.
pub fn crop_interleaved<T: Copy>(src: &[T], w: usize, c: usize, left: usize, top: usize, side: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(side * side * c);
    for y in top..top + side {
        let row = (y * w + left) * c;
        out.extend_from_slice(&src[row..row + side * c]);
    }
    out
}

// ---------------------------------------------------------------------------------
// PIL-exact bilinear resampling.
//
// Pillow resamples separably (horizontal pass, then vertical pass). For each output
// sample it centres the triangle filter at `(i + 0.5) * scale` in input coordinates,
// widens its support by the downscale factor (antialiasing), normalises the double
// weights to sum 1, and then quantises them to fixed point with `PRECISION_BITS`
// fractional bits. Accumulation is integer, starting from half an LSB, and the result
// is shifted back and clipped to u8 after each pass. A pass whose size does not change
// is skipped.
// ---------------------------------------------------------------------------------

/// Fractional bits of Pillow's 8-bit fixed-point resampling coefficients.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point taps for one axis.
struct Taps {
    /// Maximum number of taps per output sample (row stride of `coeffs`).
    ksize: usize,
    /// Per output sample: (first input index, number of taps).
    bounds: Vec<(usize, usize)>,
    coeffs: Vec<i32>,
}

#[inline]
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn bilinear_taps(in_size: usize, out_size: usize) -> Taps {
    const SUPPORT: f64 = 1.0; // triangle filter support
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let inv = 1.0 / filterscale;
    let one = (1i64 << PRECISION_BITS) as f64;

    let mut bounds = Vec::with_capacity(out_size);
    let mut coeffs = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) conversion truncates toward zero; negatives are clamped to 0 anyway.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(0) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut total = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            *wx = triangle(((x + xmin) as f64 - center + 0.5) * inv);
            total += *wx;
        }
        let k = &mut coeffs[xx * ksize..xx * ksize + n];
        for (kx, &wx) in k.iter_mut().zip(&w) {
            let wn = if total != 0.0 { wx / total } else { wx };
            *kx = if wn < 0.0 { (-0.5 + wn * one) as i32 } else { (0.5 + wn * one) as i32 };
        }
        bounds.push((xmin, n));
    }
    Taps { ksize, bounds, coeffs }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resamples an interleaved 8-bit image with `c` channels from `w x h` to `ow x oh`,
/// reproducing Pillow's `Image.resize((ow, oh), Image.BILINEAR)` exactly.
pub fn resize_bilinear_u8(src: &[u8], w: usize, h: usize, c: usize, ow: usize, oh: usize) -> Vec<u8> {
    assert_eq!(src.len(), w * h * c, "resize_bilinear_u8: buffer/shape mismatch");
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut cur: Vec<u8> = src.to_vec();
    let mut cw = w;
    if ow != w {
        let t = bilinear_taps(w, ow);
        let mut out = vec![0u8; ow * h * c];
        for y in 0..h {
            let row = &cur[y * w * c..(y + 1) * w * c];
            for (xx, &(xmin, n)) in t.bounds.iter().enumerate() {
                let k = &t.coeffs[xx * t.ksize..xx * t.ksize + n];
                for ch in 0..c {
                    let mut acc = half;
                    for (i, &kv) in k.iter().enumerate() {
                        acc += row[(xmin + i) * c + ch] as i32 * kv;
                    }
                    out[(y * ow + xx) * c + ch] = clip8(acc);
                }
            }
        }
        cur = out;
        cw = ow;
    }
    if oh != h {
        let t = bilinear_taps(h, oh);
        let mut out = vec![0u8; cw * oh * c];
        for (yy, &(ymin, n)) in t.bounds.iter().enumerate() {
            let k = &t.coeffs[yy * t.ksize..yy * t.ksize + n];
            for xc in 0..cw * c {
                let mut acc = half;
                for (i, &kv) in k.iter().enumerate() {
                    acc += cur[(ymin + i) * cw * c + xc] as i32 * kv;
                }
                out[yy * cw * c + xc] = clip8(acc);
            }
        }
        cur = out;
    }
    cur
}

/// Loads an image into model space: shape `[3, size, size]`, values in [-1, 1].
///
/// Decode (PNG/JPEG/WebP) -> RGB8 (alpha over white, gray replicated, 16-bit scaled) ->
/// torchvision center crop to the shorter side -> PIL-exact bilinear resize to
/// `size x size` (skipped when already that size) -> `(u8 / 255 - 0.5) / 0.5` in f32.
pub fn load_image(path: &Path, size: usize) -> Result<HostTensor> {
    if size == 0 {
        bail!("cannot load image '{}': target size must be positive", path.display());
    }
    Ok(preprocess(&decode_image(path)?, size))
}

/// [`load_image`] of encoded bytes in memory; `shown` names them in errors.
pub fn load_image_bytes(bytes: &[u8], shown: &str, size: usize) -> Result<HostTensor> {
    if size == 0 {
        bail!("cannot load image '{shown}': target size must be positive");
    }
    Ok(preprocess(&decode_image_bytes(bytes, shown)?, size))
}

/// The authors' preprocessing of a decoded image (see [`load_image`]).
fn preprocess(img: &DynamicImage, size: usize) -> HostTensor {
    let (w, h, rgb) = to_rgb8_on_white(img);
    let (left, top, side) = center_crop_square(w, h);
    let sq = if side == w && side == h { rgb } else { crop_interleaved(&rgb, w, 3, left, top, side) };
    let px = if side == size { sq } else { resize_bilinear_u8(&sq, side, side, 3, size, size) };
    let plane = size * size;
    let mut data = vec![0f32; 3 * plane];
    for (i, p) in px.chunks_exact(3).enumerate() {
        for ch in 0..3 {
            let v = p[ch] as f32 / 255.0;
            data[ch * plane + i] = (v - 0.5) / 0.5;
        }
    }
    HostTensor::new(vec![3, size, size], data)
}

/// One model-space value to u8 with torchvision `save_image` arithmetic on
/// `(x + 1) * 0.5`: `clamp(((x + 1) * 0.5) * 255 + 0.5, 0, 255)` truncated; NaN -> 0.
#[inline]
pub fn model_to_u8(x: f32) -> u8 {
    let u = ((x + 1.0) * 0.5) * 255.0 + 0.5;
    if u.is_nan() {
        0
    } else {
        u.clamp(0.0, 255.0) as u8
    }
}

/// CHW model-space image (3 channels, `h x w`) to interleaved RGB8.
///
/// Channels beyond what `x` holds are left 0 (a short buffer never panics).
pub fn latent_to_rgb8(x: &[f32], h: usize, w: usize) -> Vec<u8> {
    let plane = h * w;
    let mut out = vec![0u8; plane * 3];
    for ch in 0..3 {
        let start = (ch * plane).min(x.len());
        let end = ((ch + 1) * plane).min(x.len());
        for (i, &v) in x[start..end].iter().enumerate() {
            out[i * 3 + ch] = model_to_u8(v);
        }
    }
    out
}

/// Encodes interleaved RGB8 as PNG bytes.
pub fn encode_png_rgb8(rgb: &[u8], h: usize, w: usize) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let (w32, h32) = (
        u32::try_from(w).map_err(|_| anyhow!("image width {w} too large for PNG"))?,
        u32::try_from(h).map_err(|_| anyhow!("image height {h} too large for PNG"))?,
    );
    let mut buf = Vec::new();
    image::codecs::png::PngEncoder::new(&mut buf)
        .write_image(rgb, w32, h32, image::ExtendedColorType::Rgb8)
        .map_err(|e| anyhow!("PNG encoding failed: {e}"))?;
    Ok(buf)
}

/// A CHW model-space image (3 x h x w) as RGB PNG bytes.
pub fn encode_png(x: &[f32], h: usize, w: usize) -> Result<Vec<u8>> {
    if h == 0 || w == 0 {
        bail!("zero-size image ({h}x{w})");
    }
    if x.len() != 3 * h * w {
        bail!("expected 3x{h}x{w} = {} values, got {}", 3 * h * w, x.len());
    }
    encode_png_rgb8(&latent_to_rgb8(x, h, w), h, w)
}

/// Saves a CHW model-space image (3 x h x w) as an RGB PNG, atomically.
pub fn save_png(path: &Path, x: &[f32], h: usize, w: usize) -> Result<()> {
    let png = encode_png(x, h, w).map_err(|e| anyhow!("cannot save '{}': {e}", path.display()))?;
    write_atomic(path, &png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_rounding_is_bankers() {
        assert_eq!(center_crop_square(37, 23), (7, 0, 23));
        assert_eq!(center_crop_square(20, 31), (0, 6, 20)); // 5.5 -> 6
        assert_eq!(center_crop_square(20, 29), (0, 4, 20)); // 4.5 -> 4
        assert_eq!(center_crop_square(20, 21), (0, 0, 20)); // 0.5 -> 0
        assert_eq!(center_crop_square(23, 20), (2, 0, 20)); // 1.5 -> 2
        assert_eq!(center_crop_square(5, 5), (0, 0, 5));
    }

    #[test]
    fn constant_image_stays_constant() {
        for &(n, m) in &[(37usize, 16usize), (5, 24), (100, 3), (16, 16)] {
            let src = vec![201u8; n * n * 3];
            let out = resize_bilinear_u8(&src, n, n, 3, m, m);
            assert!(out.iter().all(|&v| v == 201), "{n}->{m}");
        }
    }

    #[test]
    fn sixteen_bit_and_alpha() {
        assert_eq!(u16_to_u8(0), 0);
        assert_eq!(u16_to_u8(65535), 255);
        assert_eq!(u16_to_u8(128), 0);
        assert_eq!(u16_to_u8(129), 1);
        assert_eq!(over_white(0, 0), 255);
        assert_eq!(over_white(0, 255), 0);
        assert_eq!(over_white(100, 128), 177); // 100*0.50196 + 255*0.49804 = 177.2
    }
}
