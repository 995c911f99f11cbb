"""The build journal: one file per encoded case, `encoded/<case>.npz` in the index folder.

An entry holds the case's code grids (uint16), lesion areas, source folder, DICOM provenance,
its metadata (`fdn.archive_index.metadata`, JSON text), the model checksum and the size and
mtime of each input file. It is written whole or not at all (`crashsafe.atomic_write`), and
reused only when every key, shape and dtype checks out and the case's files are unchanged
(`journal_fault`).
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from crashsafe import atomic_write
from fdn.archive_index.brain_area import JOURNAL_KEY, brain_percent
from fdn.dicom.provenance import read_provenance
from hashindex.checked_files import NUMPY_HEADER_LOCK

log = logging.getLogger(__name__)


JOURNAL_KEYS = ("normal", "abnormal", "lesion_area", "model_checksum", "source", "inputs")


def journal_fault(path: Path, checksum: str, config, inputs: dict | None) -> str | None:
    """Why the journal entry at `path` cannot be reused (None when it can)."""
    if not path.is_file():
        return "not encoded yet"
    try:
        with NUMPY_HEADER_LOCK, np.load(path, allow_pickle=False) as data:
            missing = [k for k in JOURNAL_KEYS if k not in data.files]
            if missing:
                return f"the entry lacks {', '.join(missing)}"
            if str(data["model_checksum"]) != checksum:
                return "encoded with another model"
            if inputs is not None and json.loads(str(data["inputs"])) != inputs:
                return "its input files changed since it was encoded"
            normal, abnormal, area = data["normal"], data["abnormal"], data["lesion_area"]
            str(data["source"])
            side = int(config.latent_size)
            if (
                normal.dtype != np.uint16
                or normal.ndim != 3
                or normal.shape[0] < 1
                or normal.shape[1:] != (side, side)
            ):
                return (
                    f"codes are {normal.dtype} {normal.shape}, expected uint16 (n, {side}, {side})"
                )
            if abnormal.dtype != np.uint16 or abnormal.shape != normal.shape:
                return (
                    f"abnormal codes are {abnormal.dtype} {abnormal.shape}, expected {normal.shape}"
                )
            if area.dtype != np.int64 or area.shape != (normal.shape[0],):
                return (
                    f"lesion_area is {area.dtype} {area.shape}, expected int64 ({normal.shape[0]},)"
                )
            if JOURNAL_KEY in data.files:  # entries written before it have none
                brain = data[JOURNAL_KEY]
                if (
                    brain.dtype != np.uint8
                    or brain.shape != (normal.shape[0],)
                    or (brain.size and int(brain.max()) > 100)
                ):
                    return f"{JOURNAL_KEY} is {brain.dtype} {brain.shape}, expected uint8 percent"
            K = int(config.codebook_size)
            if int(normal.max()) >= K or int(abnormal.max()) >= K:
                return f"codes outside 0..{K - 1}"
            for key in data.files:  # every member read whole: zip CRCs checked
                data[key]
    except Exception as exc:  # np.load raises zipfile.BadZipFile, EOFError, ValueError, ...
        return f"unreadable ({type(exc).__name__}: {str(exc)[:80]})"
    return None


def encoded_is_valid(path: Path, checksum: str, config, inputs: dict | None) -> bool:
    fault = journal_fault(path, checksum, config, inputs)
    if fault is not None and path.is_file():
        log.warning("re-encoding %s: %s", path.stem, fault)
    return fault is None


def write_encoded(
    path: Path,
    volume,
    normal: np.ndarray,
    abnormal: np.ndarray,
    checksum: str,
    source: str,
    inputs: dict | None = None,
) -> None:
    """One case of the build journal: its code grids and per-slice metadata, written atomically."""
    n = normal.shape[0]
    if volume.seg is not None:
        lesion_area = (volume.seg > 0).reshape(n, -1).sum(axis=1).astype(np.int64)
    else:
        lesion_area = np.full(n, -1, dtype=np.int64)
    extra: dict[str, Any] = (
        {} if volume.brain is None else {JOURNAL_KEY: brain_percent(volume.brain)}
    )
    # DICOM provenance of an imported case (CASE_dicom.json), "" for a NIfTI-only case.
    study_uid, series_uids = read_provenance(source, volume.case)
    from fdn.archive_index.metadata import case_metadata

    metadata = case_metadata(source, volume.case)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        normal=normal.astype(np.uint16),
        abnormal=abnormal.astype(np.uint16),
        lesion_area=lesion_area,
        model_checksum=np.array(checksum),
        source=np.array(source),
        study_uid=np.array(study_uid or ""),
        series_uids=np.array(series_uids or ""),
        metadata=np.array(json.dumps(metadata, sort_keys=True)),
        inputs=np.array(json.dumps(inputs, sort_keys=True)),
        **extra,
    )
    atomic_write(path, buffer.getvalue())
