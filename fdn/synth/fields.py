"""Smooth random fields and rotations: the deformations and bias fields of synthetic cases."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def smooth_field(rng: np.random.Generator, grid: int, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth random field: (grid,)*3 standard normals, cubic-upsampled to `shape`."""
    control = rng.standard_normal((grid, grid, grid))
    return ndimage.zoom(control, np.array(shape) / grid, order=3, mode="nearest", grid_mode=True)


def upsample(coarse: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Linear interpolation of a field sampled at both ends of every axis onto `shape`."""
    if coarse.shape == shape:
        return coarse
    return ndimage.zoom(
        coarse,
        np.array(shape) / np.array(coarse.shape),
        order=1,
        grid_mode=False,
        mode="nearest",
        output=np.float32,
    )
