"""The lesion of a diseased synthetic case: where it grows, its labels, its mass effect, and how
it is rendered into the four contrasts (necrotic core 1, enhancing rim 4, peritumoral edema 2)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from scipy import ndimage

from fdn.synth.fields import smooth_field

if TYPE_CHECKING:  # the generator imports this module
    from fdn.synth.anatomy import Template
    from fdn.synth.config import SynthConfig


class Lesion(NamedTuple):
    centre: np.ndarray  # (3,) output-space mm
    radius: float  # enhancing boundary, mm
    core: float  # necrotic core radius / radius
    edema: float  # edema radius / radius
    push: float  # max outward displacement, mm
    shape_seed: int


def choose_lesion(
    rng: np.random.Generator,
    config: SynthConfig,
    template: Template,
    to_template: np.ndarray,
    to_template_offset: np.ndarray,
    placement: str = "white-matter",
) -> Lesion:
    """Pick a lesion in the cerebrum of a random hemisphere.

    ``placement`` (`fdn.synth.families.PLACEMENTS`): "white-matter" keeps the whole lesion in
    the brain, centred in white matter; "cortical" centres it in grey matter within 8 mm of the
    brain's surface (the brain mask then cuts it); "deep" centres it at least 25 mm deep.
    """
    radius = rng.uniform(*config.lesion_radius_mm)
    hemisphere = rng.integers(1, 3)  # anat 1 = left, 2 = right cerebrum
    side = template.anat.ravel() == hemisphere
    depth = template.depth.ravel()
    if placement == "cortical":
        where = side & (template.gm.ravel() > 0.4) & (depth >= 2.0) & (depth <= 8.0)
    elif placement == "deep":
        where = side & (depth >= max(radius + 4.0, 25.0)) & (template.wm.ravel() > 0.3)
    elif placement == "white-matter":
        where = side & (depth >= radius + 4.0) & (template.wm.ravel() > 0.3)
    else:
        raise ValueError(f"unknown lesion placement {placement!r}")
    candidates = np.flatnonzero(where)
    if candidates.size == 0:  # very large radius: fall back to the deepest cerebrum voxels
        candidates = np.flatnonzero(side & (depth >= np.percentile(depth[side], 90)))
    voxel = np.array(np.unravel_index(rng.choice(candidates), template.anat.shape), float)
    centre_template = template.affine[:3, :3] @ voxel + template.affine[:3, 3]
    # Template -> output space through the inverse affine (the smooth warp is a few mm and
    # the lesion is re-masked to the warped brain afterwards).
    centre = np.linalg.solve(to_template, centre_template - to_template_offset)
    return Lesion(
        centre=centre,
        radius=radius,
        core=rng.uniform(*config.core_fraction),
        edema=rng.uniform(*config.edema_factor),
        push=radius * rng.uniform(*config.mass_effect),
        shape_seed=int(rng.integers(2**31)),
    )


def mass_effect(points: np.ndarray, lesion: Lesion) -> np.ndarray:
    """Backward radial warp of output points (3, ...) mm: where each one's tissue came from.

    Tissue is pushed outward by u(ρ) = push · (ρ/σ) · exp(½ − ρ²/2σ²) (maximal, = push, at
    ρ = σ; σ = the edema radius). Since push ≤ 0.5 radius < 0.6 σ, ρ − u(ρ) is increasing,
    so the warp folds nothing.
    """
    offset = points - lesion.centre.reshape(3, *([1] * (points.ndim - 1)))
    rho = np.sqrt((offset**2).sum(0))
    sigma = lesion.radius * lesion.edema
    u = lesion.push * (rho / sigma) * np.exp(0.5 - rho**2 / (2 * sigma**2))
    scale = np.where(rho > 1e-6, (rho - u) / np.maximum(rho, 1e-6), 1.0)
    return lesion.centre.reshape(offset.shape[:1] + (1,) * (offset.ndim - 1)) + offset * scale


def lesion_labels(
    lesion: Lesion, config: SynthConfig, brain: np.ndarray, tissue_ok: np.ndarray
) -> np.ndarray:
    """(H, W, Z) uint8 seg in {0, 1, 2, 4}: irregular core/rim blob and edema around it."""
    shape = config.shape
    affine = config.affine
    spacing = np.diag(affine)[:3]
    reach = lesion.radius * lesion.edema * (1 + config.shape_irregularity) + 2 * spacing.max()
    centre_vox = (lesion.centre - affine[:3, 3]) / spacing
    lo = np.maximum(np.floor(centre_vox - reach / spacing).astype(int), 0)
    hi = np.minimum(np.ceil(centre_vox + reach / spacing).astype(int) + 1, shape)
    seg = np.zeros(shape, np.uint8)
    if np.any(hi <= lo):
        return seg
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    grid = np.meshgrid(
        *[np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi, strict=True)], indexing="ij"
    )
    offset = np.stack(
        [
            (g * s + o) - c
            for g, s, o, c in zip(grid, spacing, affine[:3, 3], lesion.centre, strict=True)
        ]
    )
    rho = np.sqrt((offset**2).sum(0))
    shape_rng = np.random.default_rng(lesion.shape_seed)
    box_shape = rho.shape
    # Two independent smooth fields in [-1, 1] make the tumour and its edema irregular.
    tumour_noise = np.tanh(smooth_field(shape_rng, 4, box_shape))
    edema_noise = np.tanh(smooth_field(shape_rng, 5, box_shape))
    irregular = config.shape_irregularity
    r_tumour = rho / (lesion.radius * (1 + irregular * tumour_noise))
    r_edema = rho / (lesion.radius * lesion.edema * (1 + irregular * edema_noise))
    labels = np.zeros(box_shape, np.uint8)
    labels[(r_edema < 1) & tissue_ok[box]] = 2
    labels[r_tumour < 1] = 4
    labels[r_tumour < lesion.core] = 1
    labels[~brain[box]] = 0
    seg[box] = labels
    return seg


def merge_labels(seg: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The labels of two lesions together: where they overlap, a tumour label (1, 4) wins
    over edema (2), and the first lesion's tumour over the second's."""
    take = (new > 0) & ((seg == 0) | ((seg == 2) & (new != 2)))
    return np.where(take, new, seg)


def padded_box(mask: np.ndarray, pad: int) -> tuple[slice, ...] | None:
    """The bounding box of `mask`, grown by `pad` voxels; None when the mask is empty."""
    if not mask.any():
        return None
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(hit[0]) - pad, 0), min(int(hit[-1]) + pad + 1, mask.shape[axis])))
    return tuple(box)


def render_lesion(
    healthy: np.ndarray,
    masks: list[np.ndarray],
    means: np.ndarray,
    box: tuple[slice, ...] | None,
    texture: np.ndarray | None,
) -> np.ndarray:
    """Paint the lesion (necrosis, enhancing rim, edema) into a copy of a healthy image.

    The tumour replaces tissue; edema is mostly fluid added to the tissue that is still there,
    so it is a 70/30 blend with the healthy intensity. A smooth texture (±10 %) keeps the
    compartments from being flat, and a slight blur softens their boundaries (partial volume).
    """
    image = healthy.copy()
    if box is None:
        return image
    local = healthy[box]
    assert box is not None and texture is not None, "a lesion has a box and a texture"
    weight = np.zeros(local.shape, np.float32)
    target = np.zeros(local.shape, np.float32)
    blends = (1.0, 1.0, 0.7)  # necrosis, enhancing, edema
    for mask, mean, blend in zip(masks, means, blends, strict=True):
        m = mask[box]
        weight[m] = blend
        target[m] = blend * mean * (1 + 0.1 * texture[m])
    weight = ndimage.gaussian_filter(weight, 0.6)
    target = ndimage.gaussian_filter(target, 0.6)
    image[box] = local * (1 - weight) + target
    return image
