"""In-plane resizing of axial slices: bilinear for images, nearest neighbour for labels.

Both are written as separable weight matrices applied along each in-plane axis, so a whole
volume resizes with two matrix products (two GEMMs over all slices at once, not one per slice).
The bilinear weights use half-pixel centres (``align_corners=False``) and, when shrinking, widen
the triangle filter by the scale factor (antialiasing), i.e. the same weights as PIL's and
PyTorch's ``bilinear, antialias=True``.
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


def resize_slices_transposed(xt: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of slices stored transposed, as NIfTI's Fortran order lays them out.

    xt: (N, W, H) float32, slice n being ``xt[n].T`` (H, W) -> (N, size, size) float32, slice n
    resized to ``rows @ xt[n].T @ cols.T``. Two GEMMs over every slice at once: the first
    reduces H (the same order of sums as `resize_images`), the second W.
    """
    n, w, h = xt.shape
    if (h, w) == (size, size):
        return np.ascontiguousarray(np.swapaxes(xt, 1, 2), dtype=np.float32)
    rows = bilinear_weights(h, size)  # (size, H)
    cols = bilinear_weights(w, size)  # (size, W)
    xt = np.ascontiguousarray(xt, dtype=np.float32)
    a = (xt.reshape(n * w, h) @ rows.T).reshape(n, w, size)  # a[n, w, i] = (rows @ x_n)[i, w]
    a = np.ascontiguousarray(a.transpose(0, 2, 1)).reshape(n * size, w)  # (N·size, W)
    return (a @ cols.T).reshape(n, size, size)  # (N, size, size)


def resize_images(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of the last two axes: x (..., H, W) float -> (..., size, size) float32."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x.astype(np.float32, copy=False)
    lead = x.shape[:-2]
    xt = np.swapaxes(x, -1, -2).reshape(-1, w, h)  # (N, W, H); copies unless x is a transposed view
    return resize_slices_transposed(xt, size).reshape(*lead, size, size)


def resize_labels(y: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of the last two axes: y (..., H, W) -> (..., size, size)."""
    h, w = y.shape[-2:]
    if (h, w) == (size, size):
        return y
    return y[..., nearest_indices(h, size)[:, None], nearest_indices(w, size)[None, :]]
