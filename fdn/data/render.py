"""Render one case to a PNG: the four contrasts, the seg and anat overlays, the pseudo-healthy
rendering when the case has one (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from crashsafe import check_write_target
from fdn.data.archive import case_files_in
from fdn.data.case import read_case
from fdn.data.labels import ANAT_LABELS, SEQUENCES, largest_lesion_slice
from fdn.errors import ArchiveError
from fdn.figures import save_figure

_TITLES = {"t1": "T1", "t1ce": "T1Gd", "t2": "T2", "flair": "FLAIR"}
# BraTS convention: NET red, ED green, ET yellow.
SEG_COLOURS = {1: ("NET", (0.9, 0.1, 0.1)), 2: ("ED", (0.1, 0.8, 0.2)), 4: ("ET", (1.0, 0.9, 0.0))}
ANAT_COLOURS = {
    1: (0.12, 0.47, 0.71),
    2: (1.0, 0.5, 0.05),
    3: (0.17, 0.63, 0.17),
    4: (0.84, 0.15, 0.16),
    5: (0.58, 0.40, 0.74),
    6: (0.55, 0.34, 0.29),
}


class Shown(NamedTuple):
    case: str
    slice: int


def default_slice(seg: np.ndarray | None, depth: int) -> int:
    """The axial slice with the largest lesion area; the middle slice if there is no lesion.

    seg: (H, W, Z) labels or None.
    """
    if seg is None:
        return depth // 2
    return largest_lesion_slice((seg > 0).sum(axis=(0, 1)))


def display_window(volume: np.ndarray) -> tuple[float, float]:
    """Display range: the 0.5–99.5 percentiles of the nonzero voxels of a volume."""
    values = volume[volume != 0]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def label_overlay(
    labels: np.ndarray, colours: dict[int, tuple[float, float, float]], alpha: float
) -> np.ndarray:
    """(X, Y) labels -> (X, Y, 4) RGBA, transparent where the label has no colour."""
    rgba = np.zeros((*labels.shape, 4), np.float32)
    for label, colour in colours.items():
        rgba[labels == label] = (*colour, alpha)
    return rgba


def render_case(case_dir: Path, output: Path, slice_index: int | None = None) -> Shown:
    """Validate the case in `case_dir` and write a 2 × 4 panel PNG of one axial slice to `output`.

    Raises ArchiveError for a bad case (naming the file and the fault), ValueError for a slice
    index out of range, WriteTargetError when `output` is a symlink, a special file or a folder,
    or cannot be written. The PNG is written with `fdn.figures.save_figure` (crash-safe).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    check_write_target(output)  # before the work: a bad target fails fast
    case_dir = Path(case_dir)
    case_id = case_dir.name
    files = case_files_in(case_dir, case_id)
    if not files:
        raise ArchiveError(
            f"{case_dir} holds no file named {case_id}_t1.nii.gz, "
            f"{case_id}_t1ce.nii.gz, …; pass a case folder of a BraTS-layout "
            "archive (the folder name is the case id)"
        )
    raw = read_case(files, case_id)
    depth = raw.image.shape[3]
    if slice_index is None:
        slice_index = default_slice(raw.seg, depth)
    if not 0 <= slice_index < depth:
        raise ValueError(
            f"slice {slice_index} is out of range: case {case_id} has axial slices 0..{depth - 1}"
        )

    def plane(volume: np.ndarray) -> np.ndarray:
        # (X, Y) slice shown with x to the right and y (anterior) up.
        return volume[:, :, slice_index].T

    windows = [display_window(raw.image[c]) for c in range(4)]
    fig, axes = plt.subplots(2, 4, figsize=(13, 7.2), facecolor="black")
    for axis in axes.ravel():
        axis.set_axis_off()
    for c, sequence in enumerate(SEQUENCES):
        axes[0, c].imshow(
            plane(raw.image[c]), cmap="gray", origin="lower", vmin=windows[c][0], vmax=windows[c][1]
        )
        axes[0, c].set_title(_TITLES[sequence], color="white")

    flair = SEQUENCES.index("flair")
    axes[1, 0].imshow(
        plane(raw.image[flair]),
        cmap="gray",
        origin="lower",
        vmin=windows[flair][0],
        vmax=windows[flair][1],
    )
    if raw.seg is not None:
        colours = {label: colour for label, (_, colour) in SEG_COLOURS.items()}
        axes[1, 0].imshow(label_overlay(plane(raw.seg), colours, 0.55), origin="lower")
        axes[1, 0].legend(
            handles=[Patch(color=c, label=n) for n, c in SEG_COLOURS.values()],
            loc="lower right",
            fontsize=7,
            framealpha=0.6,
        )
        axes[1, 0].set_title("FLAIR + seg", color="white")
    else:
        axes[1, 0].set_title("FLAIR (no _seg)", color="white")

    t1 = SEQUENCES.index("t1")
    axes[1, 1].imshow(
        plane(raw.image[t1]), cmap="gray", origin="lower", vmin=windows[t1][0], vmax=windows[t1][1]
    )
    if raw.anat is not None:
        axes[1, 1].imshow(label_overlay(plane(raw.anat), ANAT_COLOURS, 0.45), origin="lower")
        axes[1, 1].legend(
            handles=[Patch(color=ANAT_COLOURS[k], label=v) for k, v in ANAT_LABELS.items()],
            loc="lower right",
            fontsize=6,
            framealpha=0.6,
        )
        axes[1, 1].set_title("T1 + anat", color="white")
    else:
        axes[1, 1].set_title("T1 (no _anat)", color="white")

    for column, sequence in ((2, "t1ce"), (3, "flair")):
        c = SEQUENCES.index(sequence)
        if raw.pseudohealthy is not None:
            # Same display window as the image, so the two panels compare directly.
            axes[1, column].imshow(
                plane(raw.pseudohealthy[c]),
                cmap="gray",
                origin="lower",
                vmin=windows[c][0],
                vmax=windows[c][1],
            )
            axes[1, column].set_title(f"pseudo-healthy {_TITLES[sequence]}", color="white")
        else:
            axes[1, column].text(
                0.5,
                0.5,
                "no _pseudohealthy",
                color="gray",
                ha="center",
                va="center",
                transform=axes[1, column].transAxes,
            )
    fig.suptitle(f"{case_id}  slice {slice_index}/{depth - 1}", color="white")
    fig.tight_layout()

    save_figure(fig, output, dpi=80, facecolor="black")
    return Shown(case_id, int(slice_index))
