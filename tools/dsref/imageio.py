"""Image and mask loading for the reference (no resizing: inputs are made at size)."""
import numpy as np
import torch
from PIL import Image


def load_image(path, size: int) -> torch.Tensor:
    """[1, 3, S, S] float32 in [-1, 1]: (u8 / 255 - 0.5) / 0.5."""
    im = Image.open(path).convert("RGB")
    assert im.size == (size, size), (path, im.size, size)
    a = np.asarray(im, dtype=np.uint8).astype(np.float32)
    a = (a / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]


def load_mask(path, grid: int) -> torch.Tensor:
    """[grid, grid] float64 mask. Per pixel: (0.299 R + 0.587 G + 0.114 B) / 255
    (grayscale: v / 255), times alpha / 255 if present; an image k times the grid
    is reduced by k x k means."""
    im = Image.open(path)
    mode = im.mode
    a = np.asarray(im).astype(np.float64)
    if mode in ("L", "LA"):
        v = (a if a.ndim == 2 else a[..., 0]) / 255.0
        alpha = a[..., 1] / 255.0 if mode == "LA" else None
    elif mode in ("RGB", "RGBA"):
        v = (0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]) / 255.0
        alpha = a[..., 3] / 255.0 if mode == "RGBA" else None
    else:
        raise ValueError(f"unsupported mask mode {mode}")
    if alpha is not None:
        v = v * alpha
    hgt, wid = v.shape
    assert hgt == wid and hgt % grid == 0, (v.shape, grid)
    k = hgt // grid
    v = v.reshape(grid, k, grid, k).mean(axis=(1, 3))
    return torch.from_numpy(v)
