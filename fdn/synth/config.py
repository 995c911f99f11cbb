"""The generator's knobs (`SynthConfig`) and the field of view every case shares."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FOV_MM = (240.0, 240.0, 155.0)
# The field of view is centred here (MNI mm): the middle of the template's brain mask in x/y,
# slightly above it in z so that, when the FOV is too short, the lower brain stem is cut first.
FOV_CENTRE_MM = np.array([0.0, -17.0, 7.0])


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generator (defaults are what `fdn-index synth` uses).

    Lengths are in mm, fractions relative, angles in degrees.
    """

    size: int = 240
    rotation_deg: float = 6.0  # max |angle| per axis of the random affine
    scale_range: tuple[float, float] = (0.92, 1.08)  # output brain size / template brain size
    translation_mm: tuple[float, float, float] = (4.0, 6.0, 7.0)  # max |shift| per axis
    deformation_mm: float = 3.5  # std of the smooth random displacement
    deformation_grid: int = 5  # control points per axis of that displacement
    intensity_jitter: float = 0.07  # relative std of each tissue intensity per case
    bias_amplitude: float = 0.1  # log-amplitude scale of the multiplicative bias field
    noise_std: float = 0.03  # Gaussian noise std relative to the WM intensity
    lesion_radius_mm: tuple[float, float] = (8.0, 22.0)  # enhancing lesion radius
    edema_factor: tuple[float, float] = (1.25, 1.9)  # edema radius / lesion radius
    core_fraction: tuple[float, float] = (0.45, 0.8)  # necrotic core radius / lesion radius
    shape_irregularity: float = 0.3  # relative radius variation of the blobs
    mass_effect: tuple[float, float] = (0.25, 0.5)  # max push / lesion radius

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, Z) of every volume: Z = round(155 · H / 240)."""
        return (self.size, self.size, max(1, round(FOV_MM[2] * self.size / FOV_MM[0])))

    @property
    def affine(self) -> np.ndarray:
        """(4, 4) voxel -> mm affine shared by every case (the FOV centred on the brain)."""
        shape = np.array(self.shape, dtype=float)
        spacing = np.array(FOV_MM) / shape
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = FOV_CENTRE_MM - spacing * (shape - 1) / 2
        return affine
