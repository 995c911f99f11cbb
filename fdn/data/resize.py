"""In-plane resizing of axial slices: bilinear for images, nearest neighbour for labels.

Both are written as separable weight matrices applied along each in-plane axis, so a whole
volume resizes with two matrix products. The bilinear weights use half-pixel centres
(``align_corners=False``) and, when shrinking, widen the triangle filter by the scale factor
(antialiasing), i.e. the same weights as PIL's and PyTorch's ``bilinear, antialias=True``.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 rows summing to 1: output sample i = weights[i] @ input."""
    scale = n_in / n_out
    support = max(scale, 1.0)  # triangle half-width in input pixels
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    inputs = np.arange(n_in)
    weights = np.maximum(0.0, 1.0 - np.abs(inputs[None, :] - centres[:, None]) / support)
    if scale > 1.0:  # PIL/PyTorch clip the window to +-support around the centre
        window_lo = np.floor(centres + 1.0 - support).clip(0)
        window_hi = np.floor(centres + 1.0 + support).clip(max=n_in)
        inside = (inputs[None, :] >= window_lo[:, None]) & (inputs[None, :] < window_hi[:, None])
        weights = weights * inside
    weights /= weights.sum(axis=1, keepdims=True)
    return weights.astype(np.float32)


@functools.lru_cache(maxsize=64)
def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """(n_out,) int64: the input pixel whose centre is nearest each output pixel centre."""
    return np.minimum(np.floor((np.arange(n_out) + 0.5) * n_in / n_out), n_in - 1).astype(np.int64)


def resize_images(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of the last two axes: x (..., H, W) float -> (..., size, size) float32."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x.astype(np.float32, copy=False)
    rows = bilinear_weights(h, size)
    cols = bilinear_weights(w, size)
    return (rows @ x.astype(np.float32, copy=False) @ cols.T).astype(np.float32, copy=False)


def resize_labels(y: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes: y (..., H, W) -> (..., size, size)."""
    h, w = y.shape[-2:]
    if (h, w) == (size, size):
        return y
    return y[..., nearest_indices(h, size)[:, None], nearest_indices(w, size)[None, :]]
