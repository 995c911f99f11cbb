"""Retrieval montages like the paper's Fig. 11: the query slice, then its top-Q hits, one row per mode.

Each cell shows FLAIR with the six normal-anatomy labels faintly tinted and the lesion labels
strongly (NET red, ED green, ET yellow), so one can see at a glance whether S_normal hits share
the query's anatomy and S_abnormal hits share its lesion.

With a region query the query cell outlines the grid cells compared; with explanations
(`QueryOptions.explain`) each hit cell carries a heat map of the per-position contributions
to its distance (brighter: more of the distance), drawn over the hit's grid cells.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from crashsafe import check_write_target  # noqa: E402
from fdn.data import SEQUENCES, load_case_files  # noqa: E402
from fdn.data.archive import case_files_inside  # noqa: E402
from fdn.data.render import (  # noqa: E402
    ANAT_COLOURS,
    SEG_COLOURS,
    display_window,
    label_overlay,
)
from fdn.errors import ArchiveError  # noqa: E402
from fdn.figures import save_figure  # noqa: E402

FLAIR = SEQUENCES.index("flair")
MODE_TITLES = {
    "normal": "S_normal (anatomy)",
    "abnormal": "S_abnormal (lesion)",
    "sum": "S_sum (both)",
}


def draw_grid_map(ax, values: np.ndarray, size: int, alpha: float = 0.55) -> None:
    """Draw (h, w) per-cell values over a slice shown by `draw_labelled_slice` (size × size
    pixels, transposed, origin lower): cell (i, j) covers pixels [i·size/h, (i+1)·size/h) ×
    [j·size/w, (j+1)·size/w). Zero cells stay transparent."""
    peak = float(values.max()) if values.size else 0.0
    shown = np.ma.masked_less_equal(values.T, 0.0)
    extent = (-0.5, size - 0.5, -0.5, size - 0.5)
    ax.imshow(
        shown,
        cmap="inferno",
        vmin=0.0,
        vmax=peak if peak > 0 else 1.0,
        alpha=alpha,
        origin="lower",
        extent=extent,
        interpolation="nearest",
    )


def draw_region_outline(ax, positions: np.ndarray, size: int) -> None:
    """Outline the (h, w) True cells of a region over a slice drawn by `draw_labelled_slice`."""
    h, w = positions.shape
    for i, j in zip(*np.nonzero(positions), strict=True):
        x0, y0 = i * size / h - 0.5, j * size / w - 0.5
        ax.add_patch(plt.Rectangle((x0, y0), size / h, size / w, fill=False, ec="cyan", lw=0.8))


def hit_contributions(explanation: dict) -> np.ndarray:
    """(h, w) float64: a hit's contributions of every codebook added per position."""
    return np.sum([np.asarray(b["contributions"]) for b in explanation["books"].values()], axis=0)


def draw_labelled_slice(
    ax, image: np.ndarray, seg: np.ndarray | None, anat: np.ndarray | None, title: str = ""
) -> None:
    """Draw one slice: image (4, X, Y) as FLAIR, anat (X, Y) faintly and seg (X, Y) strongly."""
    flair = image[FLAIR]
    lo, hi = display_window(flair)
    # Preprocessing sets voxels outside the brain to exactly 0 in every channel: show them black.
    outside = ~np.any(image != 0, axis=0)
    ax.imshow(np.where(outside, lo, flair).T, cmap="gray", origin="lower", vmin=lo, vmax=hi)
    if anat is not None:
        ax.imshow(label_overlay(anat.T, ANAT_COLOURS, 0.18), origin="lower")
    if seg is not None:
        colours = {label: colour for label, (_, colour) in SEG_COLOURS.items()}
        ax.imshow(label_overlay(seg.T, colours, 0.7), origin="lower")
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


class SliceLoader:
    """Loads the preprocessed slices of hits from their source case folders, one volume per case.

    roots: the archive folders the index was built from (`Manifest.archive_roots`). A source
    folder named by the slice table is read only if it resolves (symlinks followed) to inside
    one of them; anything else raises ArchiveError (see `fdn.data.archive.case_files_inside`).
    """

    def __init__(self, size: int, roots: list[str]):
        self.size = size
        self.roots = list(roots)
        self._volumes: dict = {}

    def load(self, case: str, source: str, slice_index: int):
        if case not in self._volumes:
            files = case_files_inside(source, case, self.roots)
            self._volumes[case] = load_case_files(files, self.size, case)
        volume = self._volumes[case]
        if not 0 <= slice_index < volume.image.shape[0]:
            raise ArchiveError(
                f"case {case!r}: slice {slice_index} is out of range (the volume "
                f"has {volume.image.shape[0]} slices); the index does not match "
                "its archive, rebuild it"
            )
        seg = None if volume.seg is None else volume.seg[slice_index]
        anat = None if volume.anat is None else volume.anat[slice_index]
        return volume.image[slice_index], seg, anat


def draw_retrieval_montage(
    out_path: Path,
    index,
    query_name: str,
    results: dict,
    *,
    query_case: str | None,
    query_slice: int,
    query_source: str | None,
    query_image: np.ndarray | None = None,
    query_labels: tuple | None = None,
    region=None,
) -> Path:
    """Write a PNG: one row per mode in `results` ({mode: [Hit, ...]}), query first in each row.

    region: the `fdn.archive_index.region.Region` of a region query (outlined on the query),
    or None. Hits with an explanation get its heat map.

    Raises WriteTargetError (before any image is read) when `out_path` is a symlink, a special
    file or a folder, or cannot be written; FdnError when a hit's source cannot be read.
    """
    check_write_target(out_path)
    loader = SliceLoader(index.manifest.input_size, index.manifest.archive_roots)
    if query_image is None:
        if query_case is None or query_source is None:
            raise ValueError("a montage needs the query's image, or its case and source")
        query_image, seg, anat = loader.load(query_case, query_source, query_slice)
    else:
        seg, anat = query_labels or (None, None)
    n_cols = 1 + max(len(hits) for hits in results.values())
    fig, axes = plt.subplots(
        len(results), n_cols, figsize=(1.6 * n_cols, 1.8 * len(results)), squeeze=False
    )
    for r, (mode, hits) in enumerate(results.items()):
        draw_labelled_slice(axes[r, 0], query_image, seg, anat, f"query\n{query_name}")
        size = query_image.shape[-1]
        if region is not None:
            book = "abnormal" if mode == "abnormal" else "normal"
            draw_region_outline(axes[r, 0], region.positions[book], size)
        axes[r, 0].set_ylabel(MODE_TITLES.get(mode, mode), fontsize=8)
        for c in range(1, n_cols):
            ax = axes[r, c]
            if c - 1 >= len(hits):
                ax.axis("off")
                continue
            hit = hits[c - 1]
            image, hit_seg, hit_anat = loader.load(hit.case, hit.source, hit.slice)
            draw_labelled_slice(
                ax,
                image,
                hit_seg,
                hit_anat,
                f"#{hit.rank} {hit.case}:{hit.slice}\nd={hit.distance:.3g}",
            )
            if hit.explanation is not None:
                draw_grid_map(ax, hit_contributions(hit.explanation), image.shape[-1])
    fig.tight_layout()
    return save_figure(fig, Path(out_path), dpi=130)
