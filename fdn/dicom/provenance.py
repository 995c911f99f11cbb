"""Where an imported case came from: the ``CASE/CASE_dicom.json`` sidecar of the archive.

`fdn-index import-dicom` writes one beside the four NIfTI files of every case it imports::

    {"study_uid": "1.2.…", "series_uids": {"t1": "1.2.…", "t1ce": …, "t2": …, "flair": …},
     "patient_id": "…", "reference_grid": "t1", "series": {…}, "source": "…"}

`fdn-index build` copies `study_uid` and `series_uids` into the slice table, and `query`
returns them with each hit, so a viewer can open the study in the PACS. This module reads
only JSON (no pydicom), so the build does not pay for importing the DICOM stack.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = "_dicom.json"


def sidecar_path(case_dir: str | Path, case: str) -> Path:
    """``case_dir/CASE_dicom.json``."""
    return Path(case_dir) / f"{case}{SIDECAR_SUFFIX}"


def read_provenance(case_dir: str | Path, case: str) -> tuple[str | None, str | None]:
    """(study_uid, series_uids as a JSON object text) of an imported case; (None, None) when
    the case has no sidecar (it was not imported from DICOM) or the sidecar is unreadable."""
    path = sidecar_path(case_dir, case)
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
        study = str(data["study_uid"])
        series = {str(k): str(v) for k, v in dict(data["series_uids"]).items()}
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning(
            "%s: unreadable DICOM provenance (%s); the case is indexed without it", path, error
        )
        return None, None
    return study, json.dumps(series, sort_keys=True)


def imported_studies(archive: str | Path) -> dict[str, str]:
    """StudyInstanceUID → case id of every case already imported into `archive`."""
    archive = Path(archive)
    found: dict = {}
    if not archive.is_dir():
        return found
    for case_dir in sorted(
        p for p in archive.iterdir() if p.is_dir() and not p.name.startswith(".")
    ):
        study, _ = read_provenance(case_dir, case_dir.name)
        if study is not None:
            found[study] = case_dir.name
    return found
