"""Slice images of an index's cases as PNG, read only from inside the index's archive folders.

The slice table names each case's source folder; a reader never trusts that name. A case
folder and every file in it are resolved (symbolic links followed) and must lie inside one of
the archive folders the manifest records (`Manifest.archive_roots`); anything else is refused
with `ImageAccessError`. Nothing is written anywhere.

Volumes are read at their original resolution with `fdn.data.read_case` (so a bad file is
refused with the archive reader's message), windowed once per case to uint8 (0.5–99.5
percentiles of the brain outside the lesion, per sequence) and kept in an LRU cache of
bounded size (512 MiB by default: about ten BraTS-size cases).
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fdn.archive_index.queries import check_case, check_slice
from fdn.data.archive import case_files_in
from fdn.data.case import read_case
from fdn.data.labels import SEQUENCES
from fdn.data.render import ANAT_COLOURS, SEG_COLOURS, display_window
from fdn.errors import FdnError

log = logging.getLogger(__name__)

OVERLAYS = ("seg", "anat")
SEG_ALPHA = 0.6
ANAT_ALPHA = 0.3


class ImageAccessError(FdnError):
    """A slice image would be read from outside the index's archive folders, or from no folder."""


class CaseImages(NamedTuple):
    """One case ready to draw: image (4, H, W, Z) uint8 windowed; seg, anat (H, W, Z) or None."""

    image: np.ndarray
    seg: np.ndarray | None
    anat: np.ndarray | None


class SliceImages:
    """PNG slices of the cases of one open index; thread-safe; reads only inside
    `index.manifest.archive_roots`."""

    def __init__(self, index, max_bytes: int = 512 * 2**20):
        self.index = index
        self.roots = [
            Path(r).resolve() for r in index.manifest.archive_roots if Path(r).is_absolute()
        ]
        self.max_bytes = int(max_bytes)  # the cache keeps at least the last case read
        cases = np.asarray(index.table["case"]).astype(str)
        sources = np.asarray(index.table["source"]).astype(str)
        self._source: dict = {}
        for case, source in zip(cases, sources):
            self._source.setdefault(case, source)
        self._cache: OrderedDict[str, CaseImages] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def _inside_roots(self, path: Path) -> bool:
        return any(path != root and path.is_relative_to(root) for root in self.roots)

    def case_files(self, case: str) -> dict[str, Path]:
        """The resolved files of `case` (sequences, seg, anat), each checked to lie inside an
        archive folder of the index. ImageAccessError otherwise."""
        check_case(self.index, case)
        if not self.roots:
            raise ImageAccessError(
                f"{self.index.index_dir}: the manifest records no archive folder, so no source "
                "image may be read; rebuild the index with this version of fdn-index"
            )
        source = Path(self._source[case])
        if "/" in case or case in ("", ".", "..") or not source.is_absolute():
            raise ImageAccessError(f"case {case!r}: its source folder is not readable here")
        try:
            folder = source.resolve(strict=True)
        except (OSError, RuntimeError):
            raise ImageAccessError(
                f"case {case!r}: its source folder {source} is missing; restore the archive"
            ) from None
        if not folder.is_dir() or not self._inside_roots(folder):
            raise ImageAccessError(
                f"case {case!r}: its source folder lies outside the index's archive folders; refused"
            )
        files = {}
        for key, path in case_files_in(folder, case).items():
            if key == "pseudohealthy":
                continue
            resolved = path.resolve(strict=True)
            if not resolved.is_file() or not self._inside_roots(resolved):
                raise ImageAccessError(
                    f"case {case!r}: {path.name} points outside the index's archive folders; refused"
                )
            files[key] = resolved
        return files

    def load(self, case: str) -> CaseImages:
        """The windowed volumes of `case`, from the cache or read now (one reader per case)."""
        with self._lock:
            if case in self._cache:
                self._cache.move_to_end(case)
                return self._cache[case]
            case_lock = self._loading.setdefault(case, threading.Lock())
        with case_lock:
            with self._lock:
                if case in self._cache:
                    return self._cache[case]
            files = self.case_files(case)
            raw = read_case(files, case)
            image = np.empty(raw.image.shape, np.uint8)
            for c in range(raw.image.shape[0]):
                # The window of the brain outside the lesion, so that a bright lesion does not
                # darken its case's normal tissue beside a healthy case's.
                tissue = raw.image[c] if raw.seg is None else np.where(raw.seg > 0, 0, raw.image[c])
                lo, hi = display_window(tissue)
                hi += 0.25 * (hi - lo)  # headroom: normal tissue mid-grey, a lesion may saturate
                scaled = (raw.image[c] - lo) * (255.0 / (hi - lo))
                image[c] = np.clip(scaled, 0, 255).astype(np.uint8)
            loaded = CaseImages(image, raw.seg, raw.anat)
            with self._lock:
                self._cache[case] = loaded
                while len(self._cache) > 1 and self.cached_bytes() > self.max_bytes:
                    self._cache.popitem(last=False)
                self._loading.pop(case, None)
            log.debug("slice images: loaded %s %s", case, image.shape)
            return loaded

    def cached_bytes(self) -> int:
        return sum(
            sum(a.nbytes for a in volume if a is not None) for volume in self._cache.values()
        )

    def png(self, case: str, slice_index: int, sequence: str = "flair", overlays=()) -> bytes:
        """PNG of one axial slice: `sequence` in grey, label overlays among seg and anat.

        Orientation as in `fdn-index show`: the first axis to the right, the second up.
        """
        return encode_png(self.rgb(case, slice_index, sequence, overlays))

    def heat_png(
        self,
        case: str,
        slice_index: int,
        values: np.ndarray,
        sequence: str = "flair",
        overlays=(),
        outline: np.ndarray | None = None,
    ) -> bytes:
        """PNG of one slice with per-cell values (h, w) as a heat map (`heat_overlay`) and the
        cells of ``outline`` (h, w) bool, a region, outlined."""
        rgb = self.rgb(case, slice_index, sequence, overlays)
        return encode_png(heat_overlay(rgb, values, outline))

    def rgb(self, case: str, slice_index: int, sequence: str = "flair", overlays=()) -> np.ndarray:
        """(W, H, 3) uint8 image of one axial slice, as `png` draws it."""
        if sequence not in SEQUENCES:
            raise ValueError(f"sequence must be one of {', '.join(SEQUENCES)}; got {sequence!r}")
        for overlay in overlays:
            if overlay not in OVERLAYS:
                raise ValueError(f"overlay must be among {', '.join(OVERLAYS)}; got {overlay!r}")
        slice_index = check_slice(self.index, case, slice_index)
        volume = self.load(case)
        if not 0 <= slice_index < volume.image.shape[3]:
            raise ValueError(f"case {case!r}: slice {slice_index} is not in its source volume")

        def plane(v: np.ndarray) -> np.ndarray:
            return v[:, :, slice_index].T[::-1]  # (Y, X), y up

        grey = plane(volume.image[SEQUENCES.index(sequence)]).astype(np.float32)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        layers = []
        if "anat" in overlays and volume.anat is not None:
            layers.append((plane(volume.anat), ANAT_COLOURS, ANAT_ALPHA))
        if "seg" in overlays and volume.seg is not None:
            colours = {label: colour for label, (_, colour) in SEG_COLOURS.items()}
            layers.append((plane(volume.seg), colours, SEG_ALPHA))
        for labels, colours, alpha in layers:
            for label, colour in colours.items():
                mask = labels == label
                if mask.any():
                    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * 255 * np.asarray(colour)
        return np.clip(rgb, 0, 255).astype(np.uint8)


HEAT_LOW = np.array([90.0, 0.0, 140.0])  # the colour of the smallest contribution
HEAT_HIGH = np.array([255.0, 230.0, 0.0])  # and of the largest
OUTLINE = np.array([0.0, 230.0, 255.0])


def cell_of_voxel(n_voxels: int, n_cells: int) -> np.ndarray:
    """(n_voxels,) int: the grid cell whose extent holds each voxel's centre (the grid tiles the
    slice evenly: `fdn.archive_index.region`)."""
    return np.minimum(((np.arange(n_voxels) + 0.5) * n_cells / n_voxels).astype(int), n_cells - 1)


def heat_overlay(rgb: np.ndarray, values: np.ndarray, outline: np.ndarray | None = None):
    """Blend per-cell values (h, w) over a slice image drawn as `SliceImages.rgb` draws it (rows:
    the second axis, upwards; columns: the first axis): dark purple for the least, yellow for
    the most, more opaque where larger; cells of value 0 are left clear. ``outline``: (h, w)
    bool cells whose borders are drawn in cyan."""
    W, H = rgb.shape[:2]
    # the cell of every pixel: columns are x (the first axis), rows are y from the top down
    cx = np.broadcast_to(cell_of_voxel(H, values.shape[0])[None, :], (W, H))
    cy = np.broadcast_to(cell_of_voxel(W, values.shape[1])[::-1][:, None], (W, H))
    per_voxel = values[cx, cy]
    peak = float(values.max()) if values.size else 0.0
    out = rgb.astype(np.float32)
    if peak > 0:
        t = (per_voxel / peak)[..., None]
        colour = (1 - t) * HEAT_LOW + t * HEAT_HIGH
        alpha = np.where(per_voxel > 0, 0.25 + 0.45 * per_voxel / peak, 0.0)[..., None]
        out = (1 - alpha) * out + alpha * colour
    if outline is not None:
        border = np.zeros((W, H), bool)  # pixels on a cell's edge
        border[:, :-1] |= cx[:, :-1] != cx[:, 1:]
        border[:, 1:] |= cx[:, 1:] != cx[:, :-1]
        border[:-1, :] |= cy[:-1, :] != cy[1:, :]
        border[1:, :] |= cy[1:, :] != cy[:-1, :]
        border[[0, -1], :] = True
        border[:, [0, -1]] = True
        out[border & outline[cx, cy]] = OUTLINE
    return np.clip(out, 0, 255).astype(np.uint8)


def encode_png(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()
