"""Writing imported cases into an archive: one case folder at a time, renamed into place, under
the archive's import lock."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

from crashsafe import exclusive_lock
from fdn.data.labels import SEQUENCES
from fdn.dicom.provenance import sidecar_path
from fdn.errors import DicomImportError

log = logging.getLogger(__name__)

PARTIAL_PREFIX = ".partial-"  # a case folder being written; removed when found later
LOCK_FILE = ".import.lock"


def _save_nifti(path: Path, volume: np.ndarray, affine: np.ndarray) -> None:
    image = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), affine)
    image.set_qform(affine, code=1)  # scanner-anatomical
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


def write_case(
    archive: Path, case: str, volumes: dict, affine: np.ndarray, provenance: dict
) -> Path:
    """Write one case into a temporary folder of `archive`, then rename it into place."""
    target = archive / case
    if target.exists():
        raise DicomImportError(
            f"{target} already exists and holds another study; move it "
            "away or import into another archive",
            study=provenance["study_uid"],
        )
    staging = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{case}-", dir=archive))
    try:
        staging.chmod(0o755)
        for sequence in SEQUENCES:
            _save_nifti(staging / f"{case}_{sequence}.nii.gz", volumes[sequence], affine)
        sidecar_path(staging, case).write_text(json.dumps(provenance, indent=2) + "\n")
        for path in staging.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        os.rename(staging, target)
        folder = os.open(archive, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


@contextmanager
def archive_lock(archive: Path):
    """Hold ``ARCHIVE/.import.lock`` (flock) for one import or sync at a time, since each run
    deletes the temporary folders it finds; a second run fails at once instead of waiting."""
    archive.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(
        archive / LOCK_FILE,
        held=lambda: DicomImportError(
            f"{archive} is being written by another import-dicom run; wait for it to finish"
        ),
    ):
        yield


def clean_partial(archive: Path) -> None:
    """Remove the temporary folders an interrupted import left in `archive`."""
    for leftover in archive.glob(f"{PARTIAL_PREFIX}*"):
        log.info("removing %s, left by an interrupted import", leftover)
        shutil.rmtree(leftover, ignore_errors=True)
