"""How much brain each indexed slice shows, and the rows a lesion query leaves out for it.

The end slices of a volume hold almost no brain, and their abnormal grid is the null code
everywhere, as any lesion-free slice's is. Under S_abnormal all such rows tie, and the first
row of a volume (its bottom slice, nearly empty) came back as a "lesion look-alike" (`make
demo`'s sixth hit). The build records each slice's brain share, the fraction of its
preprocessed pixels inside the brain mask (`fdn.data.case.Volume.brain`), in percent, in the
journal and in `layout.BRAIN_PERCENT` (brain_percent.npy, uint8, one per row, listed in the manifest with the
threshold `min_brain_percent`). S_abnormal and S_sum leave out the rows below the threshold;
S_normal keeps them, since an end slice is what another end slice's anatomy looks like.
Indexes built before it have no such file and leave nothing out.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from fdn.archive_index.layout import BRAIN_PERCENT, fix_for
from fdn.archive_index.manifest import read_listed
from fdn.errors import IndexDirError
from hashindex.checked_files import load_npy

JOURNAL_KEY = "brain_percent"
# below this share of its pixels in the brain a slice is no lesion look-alike: the top and
# bottom of the head (the synthetic cases' first and last few slices)
MIN_BRAIN_PERCENT = 5
LESION_MODES = ("abnormal", "sum")


def brain_percent(brain: np.ndarray) -> np.ndarray:
    """(Z,) uint8: the percentage of each slice's pixels in the brain mask (Z, H, W) bool,
    rounded."""
    brain = np.asarray(brain, dtype=bool)
    return np.round(brain.reshape(len(brain), -1).mean(axis=1) * 100).astype(np.uint8)


def brain_file_bytes(percent: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(percent, dtype=np.uint8))
    return buffer.getvalue()


def lesion_query_rows(percent: np.ndarray, min_percent: int) -> np.ndarray:
    """(N,) bool: the rows an S_abnormal or S_sum query may return."""
    return percent >= min_percent


def read_lesion_rows(index_dir: Path, manifest, n_rows: int, verify: bool) -> np.ndarray | None:
    """(N,) bool rows a lesion query may return, from the index's listed brain_percent.npy;
    None where the manifest records no threshold (an index built before it)."""
    if manifest.min_brain_percent is None:
        return None
    path = index_dir / BRAIN_PERCENT
    if BRAIN_PERCENT not in manifest.files:
        raise IndexDirError(
            f"{index_dir}: the manifest sets min_brain_percent but lists no {BRAIN_PERCENT}. "
            f"{fix_for(index_dir)}."
        )
    try:
        percent = load_npy(
            io.BytesIO(read_listed(index_dir, manifest, BRAIN_PERCENT, verify=verify))
        )
    except ValueError as exc:
        raise IndexDirError(f"{path}: unreadable ({exc}). {fix_for(index_dir)}.") from None
    if percent.dtype != np.uint8 or percent.shape != (n_rows,):
        raise IndexDirError(
            f"{path}: expected ({n_rows},) uint8, found {percent.dtype} {percent.shape}. "
            f"{fix_for(index_dir)}."
        )
    return lesion_query_rows(percent, manifest.min_brain_percent)
