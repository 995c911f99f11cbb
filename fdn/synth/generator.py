"""Semi-synthetic BraTS-like cases built from real anatomy (the MNI152 template).

Each case is a new "patient": the template is warped by a random small affine (rotation,
anisotropic scale, translation, so the axial position of anatomy varies) and a random smooth
deformation, then four contrasts are rendered from the warped tissue maps with per-case
intensity jitter, a bias field and noise. A diseased case also gets a lesion — necrotic core (1),
enhancing rim (4), peritumoral edema (2) — of random size, shape and location in the cerebrum,
and its mass effect pushes the surrounding anatomy outward.

Ground truth written beside the images:

* ``_seg``: the lesion labels (all zero for a healthy case).
* ``_anat``: the six normal-anatomy labels of the warped anatomy *including* the mass effect;
  inside the lesion it keeps the label the tissue there would have had without the lesion
  (counterfactual).
* ``_pseudohealthy``: (H, W, Z, 4) the same case rendered without its lesion: the same warp
  (mass effect included, so it matches ``_anat`` voxel for voxel), the same bias field, noise
  and intensity scale; outside the lesion and its edema it is identical to the images.

Geometry: an ``--size H`` archive has H × H × Z voxels with Z = round(155 · H / 240), i.e. the
BraTS field of view (240 × 240 × 155 mm) sampled at 240/H mm in-plane and 155/Z mm axially.
Volumes are int16 "scanner units" (BraTS ships int16 too); labels are uint8.

Determinism: case i of seed s draws from ``numpy.random.default_rng([s, i])``, so the same seed
gives byte-identical volumes whatever the number of cases, and the healthy cases are a
seed-determined subset.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
from scipy import ndimage

from fdn.data.labels import ANAT_LABELS, SEQUENCES
from fdn.synth.anatomy import load_template
from fdn.synth.config import FOV_CENTRE_MM, FOV_MM, SynthConfig
from fdn.synth.families import (
    DEFAULT_FAMILIES,
    FAMILIES,
    LesionFamily,
    case_family,
    parse_families,
)
from fdn.synth.fields import rotation_matrix, smooth_field, upsample
from fdn.synth.lesion import (
    choose_lesion,
    lesion_labels,
    mass_effect,
    merge_labels,
    padded_box,
    render_lesion,
)

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
SYNTH_LISTING = "synth.json"
COARSE_STEP_MM = 4.0  # the warp is smooth: evaluate it on a 4 mm grid, interpolate linearly

# Mean tissue intensities per contrast (arbitrary units, WM of T1 = 1). Relative orders follow
# MR physics: T1 WM > GM > CSF; T1Gd like T1 with a bright enhancing rim; T2 CSF > GM > WM with
# lesion and edema bright; FLAIR CSF dark, edema bright.
_TISSUES = ("wm", "gm", "csf", "necrosis", "enhancing", "edema")
_INTENSITY = {
    "t1": (1.00, 0.68, 0.25, 0.30, 0.55, 0.55),
    "t1ce": (1.00, 0.70, 0.27, 0.30, 1.65, 0.58),
    "t2": (0.42, 0.68, 1.60, 1.45, 0.95, 1.20),
    "flair": (0.55, 0.78, 0.12, 0.65, 1.05, 1.45),
}


class SynthCase(NamedTuple):
    """One rendered case. Arrays are (H, W, Z) unless noted."""

    images: np.ndarray  # (H, W, Z, 4) int16, channel order SEQUENCES
    pseudohealthy: np.ndarray  # (H, W, Z, 4) int16
    seg: np.ndarray  # uint8 in {0, 1, 2, 4}
    anat: np.ndarray  # uint8 in 0..6
    affine: np.ndarray  # (4, 4)
    healthy: bool
    lesion_centre_mm: tuple[float, float, float] | None  # the first lesion's
    family: str | None = None  # the lesion family (`fdn.synth.families`); None when healthy


def synthesize_case(
    seed: int,
    case_index: int,
    healthy: bool,
    config: SynthConfig | None = None,
    family: LesionFamily | None = None,
) -> SynthCase:
    """Render one case; the same (seed, case_index, healthy, config, family) gives identical
    arrays. ``family`` defaults to `glioma`, the generator's lesion before families existed."""
    config = config or SynthConfig()
    family = family or FAMILIES[DEFAULT_FAMILIES[0]]
    template = load_template()
    rng = np.random.default_rng([seed, case_index])
    shape = config.shape
    affine = config.affine

    # Output mm -> template mm: q = M (p − c) + c + t + smooth displacement.
    scale = rng.uniform(*config.scale_range, size=3) * rng.uniform(0.97, 1.03)
    rotation = rotation_matrix(rng.uniform(-1, 1, 3) * config.rotation_deg)
    to_template = rotation @ np.diag(1.0 / scale)
    translation = rng.uniform(-1, 1, 3) * np.array(config.translation_mm)
    to_template_offset = FOV_CENTRE_MM + translation - to_template @ FOV_CENTRE_MM

    # The warp is evaluated on a coarse grid (both FOV ends included) and interpolated.
    coarse_shape = tuple(
        int(min(n, np.ceil(f / COARSE_STEP_MM) + 1)) for n, f in zip(shape, FOV_MM, strict=True)
    )
    axes = [np.linspace(0, n - 1, c) for n, c in zip(shape, coarse_shape, strict=True)]
    ijk = np.stack(np.meshgrid(*axes, indexing="ij"))
    points = np.tensordot(affine[:3, :3], ijk, axes=1) + affine[:3, 3].reshape(3, 1, 1, 1)
    displacement = (
        np.stack([smooth_field(rng, config.deformation_grid, coarse_shape) for _ in range(3)])
        * config.deformation_mm
    )

    lesions = []
    lesion_config = family.config(config)
    if not healthy:
        low, high = family.count
        # one lesion draws nothing here, so a glioma case is the case it was before families
        count = low if low == high else int(rng.integers(low, high + 1))
        for _ in range(count):
            lesions.append(
                choose_lesion(
                    rng, lesion_config, template, to_template, to_template_offset, family.placement
                )
            )
        for lesion in lesions:  # each pushes the tissue the previous ones left
            points = mass_effect(points, lesion)
    source = (
        np.tensordot(to_template, points, axes=1)
        + to_template_offset.reshape(3, 1, 1, 1)
        + displacement
    )
    to_voxel = np.linalg.inv(template.affine)
    source_vox = np.tensordot(to_voxel[:3, :3], source, axes=1) + to_voxel[:3, 3].reshape(
        3, 1, 1, 1
    )
    coords = np.stack([upsample(c.astype(np.float32), shape) for c in source_vox])

    def sample(volume: np.ndarray, order: int) -> np.ndarray:
        return ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=0.0)

    wm, gm, brain_fraction = (
        sample(template.wm, 1),
        sample(template.gm, 1),
        sample(template.brain, 1),
    )
    # The template's CSF is brain − GM − WM (never negative there), and linear interpolation
    # commutes with that difference: one resampling saved.
    csf = np.clip(brain_fraction - gm - wm, 0, 1)
    brain = brain_fraction > 0.5
    anat = sample(template.anat, 0) * brain
    tissue = np.stack([wm, gm, csf]) * brain

    seg = np.zeros(shape, np.uint8)
    for lesion in lesions:
        labels = lesion_labels(lesion, lesion_config, brain, tissue_ok=(wm + gm) > 0.5)
        if not family.enhancing:  # one non-enhancing compartment: BraTS's label 1 (NET)
            labels[labels == 4] = 1
        seg = merge_labels(seg, labels)

    lesion_box = padded_box(seg > 0, pad=3)
    lesion_texture = None
    if lesion_box is not None:
        box_shape = tuple(s.stop - s.start for s in lesion_box)
        lesion_texture = np.tanh(smooth_field(rng, 6, box_shape)).astype(np.float32)

    # Per-case contrast: jittered tissue intensities, a separable bias field, noise.
    axes_unit = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    lesion_masks = [(seg == 1), (seg == 4), (seg == 2)]
    images = np.empty((*shape, 4), np.int16)
    pseudo = np.empty((*shape, 4), np.int16)
    for channel, sequence in enumerate(SEQUENCES):
        means = np.array(_INTENSITY[sequence]) * (
            1 + config.intensity_jitter * rng.standard_normal(len(_TISSUES))
        )
        gain = rng.uniform(300, 900)
        log_bias = sum(
            (rng.uniform(-1, 1) * a + rng.uniform(-1, 1) * a**2 * 0.5).reshape(
                [-1 if d == axis else 1 for d in range(3)]
            )
            for axis, a in enumerate(axes_unit)
        ) * (config.bias_amplitude / 1.5)
        bias = np.exp(log_bias).astype(np.float32)
        noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(config.noise_std)
        healthy_image = np.tensordot(means[:3].astype(np.float32), tissue, axes=1)
        lesion_means = means[3:].copy()
        if not family.enhancing:  # solid tumour, not necrosis: brighter than edema on T2/FLAIR
            lesion_means[0] = means[5] * 1.15
        diseased = render_lesion(
            healthy_image, lesion_masks, lesion_means, lesion_box, lesion_texture
        )
        for out, clean in ((pseudo, healthy_image), (images, diseased)):
            value = (clean * bias + noise * means[0]) * gain
            value = np.where(brain, np.clip(value, 1, 32767), 0)
            out[..., channel] = np.rint(value).astype(np.int16)

    return SynthCase(
        images=images,
        pseudohealthy=pseudo,
        seg=seg,
        anat=anat.astype(np.uint8),
        affine=affine,
        healthy=healthy,
        lesion_centre_mm=None
        if not lesions
        else (
            float(lesions[0].centre[0]),
            float(lesions[0].centre[1]),
            float(lesions[0].centre[2]),
        ),
        family=None if healthy else family.name,
    )


def healthy_cases(n_cases: int, healthy_fraction: float, seed: int) -> np.ndarray:
    """(n_cases,) bool: which cases are healthy; round(n · fraction) of them, chosen by seed."""
    n_healthy = int(round(n_cases * healthy_fraction))
    order = np.random.default_rng([seed, 2**32 - 1]).permutation(n_cases)
    healthy = np.zeros(n_cases, bool)
    healthy[order[:n_healthy]] = True
    return healthy


def case_id(index: int) -> str:
    """The id of case `index`: SYN_000, SYN_001, …"""
    return f"SYN_{index:03d}"


def _write_case(case_dir: Path, cid: str, case: SynthCase) -> None:
    case_dir.mkdir(parents=True)

    def save(array: np.ndarray, suffix: str) -> None:
        image = nib.Nifti1Image(array, case.affine)
        image.header.set_xyzt_units("mm")
        nib.save(image, case_dir / f"{cid}_{suffix}.nii.gz")

    for channel, sequence in enumerate(SEQUENCES):
        save(np.ascontiguousarray(case.images[..., channel]), sequence)
    save(case.seg, "seg")
    save(case.anat, "anat")
    save(case.pseudohealthy, "pseudohealthy")


def _manifest(
    n_cases: int, healthy_fraction: float, seed: int, size: int, families: tuple[str, ...]
) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "cases": n_cases,
        "healthy_fraction": healthy_fraction,
        "seed": seed,
        "size": size,
        "lesion_families": list(families),
    }


def _same_archive(listing: Path, manifest: dict) -> bool:
    """Whether the synth.json at ``listing`` describes the archive ``manifest`` would make
    (one written before lesion families holds the default family)."""
    try:
        previous = json.loads(listing.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(previous, dict):
        return False
    previous.setdefault("lesion_families", list(DEFAULT_FAMILIES))
    return {k: v for k, v in previous.items() if k in manifest} == manifest


def synthesize_archive(
    out_dir: str | os.PathLike,
    n_cases: int,
    healthy_fraction: float,
    seed: int,
    size: int = 240,
    progress: bool = False,
    overwrite: bool = False,
    families: tuple[str, ...] = DEFAULT_FAMILIES,
) -> list[str]:
    """Write a BraTS-layout archive of `n_cases` synthetic cases; return the case ids.

    Each diseased case's lesion comes from one of ``families`` (`fdn.synth.families`), drawn
    uniformly per case; synth.json lists the families and each case's.

    The archive is built in a temporary sibling folder and moved into place at the end, so an
    interrupted run leaves nothing half-written at `out_dir`. If `out_dir` already holds an
    archive made with the same parameters it is left as it is (the output would be identical).

    Raises
    ------
    ValueError
        Bad parameters.
    FileExistsError
        `out_dir` exists, is not empty and is not the same synthetic archive (and not
        `overwrite`).
    """
    if not isinstance(n_cases, int | np.integer) or n_cases < 1:
        raise ValueError(f"n_cases must be a positive integer, got {n_cases!r}")
    if not 0.0 <= healthy_fraction <= 1.0:
        raise ValueError(f"healthy_fraction must lie in [0, 1], got {healthy_fraction!r}")
    if not isinstance(size, int | np.integer) or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size!r}")
    families = parse_families(families)
    out = Path(out_dir)
    manifest = _manifest(int(n_cases), float(healthy_fraction), int(seed), int(size), families)
    ids = [case_id(i) for i in range(n_cases)]
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a folder; choose another output path")
        previous = out / SYNTH_LISTING
        if previous.is_file() and not overwrite:
            if _same_archive(previous, manifest) and all((out / cid).is_dir() for cid in ids):
                log.info("%s already holds this archive; nothing to do", out)
                return ids
        if any(out.iterdir()) and not overwrite:
            raise FileExistsError(
                f"{out} already exists and holds other files; delete it, choose another output "
                "folder, or pass overwrite=True (--overwrite)"
            )
    config = SynthConfig(size=int(size))
    healthy = healthy_cases(n_cases, healthy_fraction, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the archive is an ordinary folder
    try:
        iterator = range(n_cases)
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, desc="synth", unit="case")
        cases = []
        for index in iterator:
            family = case_family(seed, index, families)
            case = synthesize_case(seed, index, bool(healthy[index]), config, family)
            _write_case(staging / ids[index], ids[index], case)
            cases.append(
                {
                    "case": ids[index],
                    "healthy": case.healthy,
                    "lesion_centre_mm": case.lesion_centre_mm,
                    "lesion_voxels": int((case.seg > 0).sum()),
                    "family": case.family,
                }
            )
        manifest["shape"] = list(config.shape)
        manifest["anat_labels"] = ANAT_LABELS
        manifest["case_list"] = cases
        (staging / SYNTH_LISTING).write_text(json.dumps(manifest, indent=2))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ids
