#!/usr/bin/env python3
"""Generate the image-I/O test fixtures and their goldens (deterministic, rerunnable).

Writes into tests/fixtures/images/:
  * small odd-sized test images (PNG of every colour type we handle, JPEG, WebP);
  * images.safetensors: for every image and target size S (16; also 24 for a few),
    the expected model-space tensor [3, S, S] (f32) under the key "<file name>@<S>", computed with
    PIL the way the authors' torchvision pipeline does it:
        RGB8 (alpha composited on white explicitly, 16-bit scaled round(v*255/65535))
        -> .convert('RGB') -> CenterCrop(min(w, h)) via PIL crop with Python's round
        -> .resize((S, S), Image.BILINEAR) -> (u8 / 255 - 0.5) / 0.5 in float32;
  * masks.safetensors: for every mask image and grid G in its list, the expected
    [G, G] f32 mask under "<file name>@<G>", computed in numpy (f64) with the
    definition of src/io/mask.rs: luminance (0.299 R + 0.587 G + 0.114 B)/max
    (gray: v/max) times alpha/max, the same center crop, exact area averaging.

Needs numpy, Pillow, safetensors. Usage: python3 tools/make_image_goldens.py
"""

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image, features
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "images")
SIZES = (16,)
# A second target size for a few images (keeps images.safetensors small).
EXTRA_SIZES = {n: (24,) for n in ("rgb_37x23.png", "rgba_20x31.png", "exact_16x16.png", "small_9x11.png")}


# ----------------------------------------------------------------------------------
# A tiny PNG writer (PIL cannot write 16-bit RGB/RGBA or gray+alpha PNGs).
# ----------------------------------------------------------------------------------
def _chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def write_png_raw(path, arr, bit_depth):
    """arr: HxW (gray) or HxWxC (C = 2 gray+alpha, 3 RGB, 4 RGBA), uint8 or uint16."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    h, w, c = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    dtype = ">u2" if bit_depth == 16 else "u1"
    rows = arr.astype(dtype).reshape(h, w * c)
    raw = b"".join(b"\x00" + r.tobytes() for r in rows)
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )
    with open(path, "wb") as f:
        f.write(data)


# ----------------------------------------------------------------------------------
# Reference pipeline.
# ----------------------------------------------------------------------------------
def u16_to_u8(a):
    return np.round(a.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)


def over_white(c, a):
    """c, a: uint8 arrays. round(c * a/255 + 255 * (1 - a/255)) (never a tie)."""
    af = a.astype(np.float64) / 255.0
    v = c.astype(np.float64) * af + 255.0 * (1.0 - af)
    return np.clip(np.round(v), 0, 255).astype(np.uint8)


def to_rgb8(arr):
    """8-bit HxW / HxWx{2,3,4} array -> HxWx3 RGB8 with alpha composited on white."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    c = arr.shape[2]
    if c == 1:
        return np.repeat(arr, 3, axis=2)
    if c == 2:
        v = over_white(arr[:, :, 0], arr[:, :, 1])
        return np.repeat(v[:, :, None], 3, axis=2)
    if c == 3:
        return arr.copy()
    a = arr[:, :, 3]
    return np.stack([over_white(arr[:, :, k], a) for k in range(3)], axis=2)


def center_crop_box(w, h):
    s = min(w, h)
    top = int(round((h - s) / 2.0))  # Python round: ties to even, as torchvision
    left = int(round((w - s) / 2.0))
    return left, top, s


def reference_tensor(rgb8, size):
    img = Image.fromarray(rgb8, "RGB").convert("RGB")
    w, h = img.size
    left, top, s = center_crop_box(w, h)
    img = img.crop((left, top, left + s, top + s))
    img = img.resize((size, size), Image.BILINEAR)
    x = np.asarray(img).astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(0.5)) / np.float32(0.5)
    return np.ascontiguousarray(x.transpose(2, 0, 1)).astype(np.float32)


def area_weights(n, m):
    """m x n matrix of exact area-averaging weights (rows sum to 1)."""
    wm = np.zeros((m, n), dtype=np.float64)
    for i in range(m):
        lo, hi = i * n, (i + 1) * n  # units of 1/m
        for j in range(n):
            ov = min(hi, (j + 1) * m) - max(lo, j * m)
            if ov > 0:
                wm[i, j] = ov / n
    return wm


def reference_mask(vals, grid):
    """vals: HxW f64 per-pixel mask values."""
    h, w = vals.shape
    left, top, s = center_crop_box(w, h)
    sq = vals[top : top + s, left : left + s]
    wm = area_weights(s, grid)
    return np.clip(wm @ sq @ wm.T, 0.0, 1.0).astype(np.float32)


def mask_values(arr, maxv):
    """Per-pixel mask value from a source array (gray, gray+alpha, RGB, RGBA)."""
    a = arr.astype(np.float64)
    if a.ndim == 2:
        return a / maxv
    c = a.shape[2]
    if c in (1, 2):
        v = a[:, :, 0] / maxv
    else:
        v = (0.299 * a[:, :, 0] + 0.587 * a[:, :, 1] + 0.114 * a[:, :, 2]) / maxv
    if c in (2, 4):
        v = v * (a[:, :, c - 1] / maxv)
    return v


# ----------------------------------------------------------------------------------
# Test images.
# ----------------------------------------------------------------------------------
def textured(rng, h, w, c):
    """Noise over gradients, with some saturated pixels: stresses every filter tap."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = [255.0 * xx / max(w - 1, 1), 255.0 * yy / max(h - 1, 1), np.full((h, w), 127.0)]
    planes += [np.full((h, w), 128.0)] * max(0, c - 3)
    base = np.stack(planes[:c], axis=2)
    noise = rng.integers(-90, 91, size=(h, w, c))
    out = np.clip(base + noise, 0, 255).astype(np.uint8)
    sat = rng.random((h, w)) < 0.08
    out[sat] = rng.choice(np.array([0, 255], dtype=np.uint8), size=(int(sat.sum()), c))
    return out


def smooth(h, w):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    g = 40 + 170 * xx / (w - 1)
    b = 220 - 150 * yy / (h - 1)
    return np.clip(np.round(np.stack([r, g, b], axis=2)), 0, 255).astype(np.uint8)


def pil_bytes(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20240611)
    rgb8_of = {}  # file name -> decoded RGB8 array (reference input)

    def save(name, data):
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)

    def check_pil(name, expect):
        got = np.asarray(Image.open(os.path.join(OUT, name)))
        assert got.shape == expect.shape and (got == expect).all(), name

    # RGB PNG 37x23 (w x h).
    a = textured(rng, 23, 37, 3)
    save("rgb_37x23.png", pil_bytes(Image.fromarray(a, "RGB"), "PNG"))
    check_pil("rgb_37x23.png", a)
    rgb8_of["rgb_37x23.png"] = a

    # RGBA PNG 20x31 with varied alpha (0, 255 and everything between).
    a = textured(rng, 31, 20, 4)
    alpha = rng.integers(0, 256, size=(31, 20)).astype(np.uint8)
    alpha[:3] = 255
    alpha[-3:] = 0
    a[:, :, 3] = alpha
    save("rgba_20x31.png", pil_bytes(Image.fromarray(a, "RGBA"), "PNG"))
    check_pil("rgba_20x31.png", a)
    rgb8_of["rgba_20x31.png"] = to_rgb8(a)

    # Grayscale PNG 29x41.
    a = textured(rng, 41, 29, 1)[:, :, 0]
    save("gray_29x41.png", pil_bytes(Image.fromarray(a, "L"), "PNG"))
    check_pil("gray_29x41.png", a)
    rgb8_of["gray_29x41.png"] = to_rgb8(a)

    # Gray + alpha PNG 27x22.
    a = textured(rng, 22, 27, 2)
    a[:, :, 1] = rng.integers(0, 256, size=(22, 27))
    save("la_27x22.png", pil_bytes(Image.fromarray(a, "LA"), "PNG"))
    check_pil("la_27x22.png", a)
    rgb8_of["la_27x22.png"] = to_rgb8(a)

    # 16-bit grayscale PNG 33x27 (PIL would clip I;16 -> L, so scale explicitly).
    a16 = rng.integers(0, 65536, size=(27, 33)).astype(np.uint16)
    a16[0, :4] = [0, 128, 129, 65535]
    write_png_raw(os.path.join(OUT, "gray16_33x27.png"), a16, 16)
    got = np.asarray(Image.open(os.path.join(OUT, "gray16_33x27.png"))).astype(np.int64)
    assert (got == a16.astype(np.int64)).all()
    rgb8_of["gray16_33x27.png"] = to_rgb8(u16_to_u8(a16))

    # 16-bit RGBA PNG 19x24 (16 -> 8 bits per channel, then composite on white).
    a16 = rng.integers(0, 65536, size=(24, 19, 4)).astype(np.uint16)
    write_png_raw(os.path.join(OUT, "rgba16_19x24.png"), a16, 16)
    rgb8_of["rgba16_19x24.png"] = to_rgb8(u16_to_u8(a16))

    # Palette PNG 26x19 (no transparency).
    pal = rng.integers(0, 256, size=(40, 3)).astype(np.uint8)
    idx = rng.integers(0, 40, size=(19, 26)).astype(np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(pal.flatten().tolist())
    save("palette_26x19.png", pil_bytes(im, "PNG"))
    rgb8_of["palette_26x19.png"] = np.asarray(Image.open(os.path.join(OUT, "palette_26x19.png")).convert("RGB"))
    assert (rgb8_of["palette_26x19.png"] == pal[idx]).all()

    # Palette PNG 21x25 with a tRNS chunk (per-entry alpha): composite on white.
    pal = rng.integers(0, 256, size=(16, 3)).astype(np.uint8)
    palpha = rng.integers(0, 256, size=16).astype(np.uint8)
    palpha[0], palpha[1] = 0, 255
    idx = rng.integers(0, 16, size=(25, 21)).astype(np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(pal.flatten().tolist())
    save("palette_trns_21x25.png", pil_bytes(im, "PNG", transparency=palpha.tobytes()))
    rgba = np.asarray(Image.open(os.path.join(OUT, "palette_trns_21x25.png")).convert("RGBA"))
    assert (rgba[:, :, :3] == pal[idx]).all() and (rgba[:, :, 3] == palpha[idx]).all()
    rgb8_of["palette_trns_21x25.png"] = to_rgb8(rgba)

    # JPEG. JPEG decoders are only required to be accurate to about 1 LSB, and the
    # image crate (zune-jpeg) does not reproduce libjpeg-turbo's IDCT / colour
    # conversion / chroma upsampling rounding on arbitrary content. These two decode
    # identically in both (checked), so their goldens are exact:
    #   colour 4:4:4 with flat 8x8 blocks, and grayscale with smooth content.
    blocks = rng.integers(0, 256, size=(4, 5, 3)).astype(np.uint8)
    a = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))[:30, :40]
    save("rgb_40x30.jpg", pil_bytes(Image.fromarray(a, "RGB"), "JPEG", quality=92, subsampling=0))
    rgb8_of["rgb_40x30.jpg"] = np.asarray(Image.open(os.path.join(OUT, "rgb_40x30.jpg")).convert("RGB"))
    a = smooth(26, 33)[:, :, 1]
    save("gray_33x26.jpg", pil_bytes(Image.fromarray(a, "L"), "JPEG", quality=92))
    rgb8_of["gray_33x26.jpg"] = np.asarray(Image.open(os.path.join(OUT, "gray_33x26.jpg")).convert("RGB"))
    # A typical photo-style JPEG (4:2:0): decoder-dependent, tested with a tolerance.
    a = smooth(28, 36)
    save("rgb_36x28_420.jpg", pil_bytes(Image.fromarray(a, "RGB"), "JPEG", quality=90))
    rgb8_of["rgb_36x28_420.jpg"] = np.asarray(Image.open(os.path.join(OUT, "rgb_36x28_420.jpg")).convert("RGB"))

    # WebP (lossless: exact pixels; lossy: decoder output of libwebp).
    if features.check("webp"):
        a = textured(rng, 34, 30, 3)
        save("rgb_30x34_lossless.webp", pil_bytes(Image.fromarray(a, "RGB"), "WEBP", lossless=True))
        check_pil("rgb_30x34_lossless.webp", a)
        rgb8_of["rgb_30x34_lossless.webp"] = a
        a = smooth(26, 35)
        save("rgb_35x26_lossy.webp", pil_bytes(Image.fromarray(a, "RGB"), "WEBP", quality=90, method=6))
        rgb8_of["rgb_35x26_lossy.webp"] = np.asarray(
            Image.open(os.path.join(OUT, "rgb_35x26_lossy.webp")).convert("RGB")
        )

    # Already at the first target size (used as is), and an upscale case.
    a = textured(rng, 16, 16, 3)
    save("exact_16x16.png", pil_bytes(Image.fromarray(a, "RGB"), "PNG"))
    rgb8_of["exact_16x16.png"] = a
    a = textured(rng, 11, 9, 3)
    save("small_9x11.png", pil_bytes(Image.fromarray(a, "RGB"), "PNG"))
    rgb8_of["small_9x11.png"] = a

    goldens = {}
    for name, rgb in sorted(rgb8_of.items()):
        for s in SIZES + EXTRA_SIZES.get(name, ()):
            goldens[f"{name}@{s}"] = reference_tensor(rgb, s)
    save_file(goldens, os.path.join(OUT, "images.safetensors"))

    # Masks.
    masks = {}
    # RGBA 45x38: a soft white blob on black, alpha ramp on the left.
    yy, xx = np.mgrid[0:38, 0:45].astype(np.float64)
    blob = np.exp(-(((xx - 26) / 9.0) ** 2 + ((yy - 20) / 7.0) ** 2))
    m = np.zeros((38, 45, 4), dtype=np.uint8)
    m[:, :, 0] = np.round(255 * blob)
    m[:, :, 1] = np.round(255 * blob**0.8)
    m[:, :, 2] = np.round(255 * blob**1.2)
    m[:, :, 3] = np.clip(np.round(255 * xx / 20.0), 0, 255)
    save("mask_rgba_45x38.png", pil_bytes(Image.fromarray(m, "RGBA"), "PNG"))
    check_pil("mask_rgba_45x38.png", m)
    for g in (8, 5):
        masks[f"mask_rgba_45x38.png@{g}"] = reference_mask(mask_values(m, 255.0), g)
    # 8-bit gray 30x30 hard rectangle, like the authors' hard-coded local mask.
    m = np.zeros((30, 30), dtype=np.uint8)
    m[13:28, 11:19] = 255
    save("mask_gray_30x30.png", pil_bytes(Image.fromarray(m, "L"), "PNG"))
    masks["mask_gray_30x30.png@8"] = reference_mask(mask_values(m, 255.0), 8)
    # 16-bit gray 7x6: upsampled to the grid.
    m16 = rng.integers(0, 65536, size=(6, 7)).astype(np.uint16)
    write_png_raw(os.path.join(OUT, "mask_gray16_7x6.png"), m16, 16)
    masks["mask_gray16_7x6.png@8"] = reference_mask(mask_values(m16, 65535.0), 8)
    # RGB 33x41 noise.
    m = textured(rng, 41, 33, 3)
    save("mask_rgb_33x41.png", pil_bytes(Image.fromarray(m, "RGB"), "PNG"))
    masks["mask_rgb_33x41.png@8"] = reference_mask(mask_values(m, 255.0), 8)
    save_file(masks, os.path.join(OUT, "masks.safetensors"))

    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files ({total} bytes) to {OUT}")


if __name__ == "__main__":
    main()
