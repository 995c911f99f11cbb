"""Removing imported studies from an archive (withdrawn consent): `import-dicom --remove`.

    remove_studies("archive/", ["P1a2b3c4d5e_0f1e2d3c"])      # by case id
    remove_studies("archive/", ["1.2.826.0.1.3680043.2.1"])    # or by StudyInstanceUID

Under the archive's import lock, each case folder is renamed to a temporary name (one atomic
rename: from then on no build, import or sync sees the case, and its StudyInstanceUID is no
longer "already imported"), the folder of the archive is fsynced, and the renamed folder is
deleted. A removal killed between the two leaves a ``.partial-`` folder, which the next import,
sync or removal deletes (`fdn.dicom.archive_writer.clean_partial`). The case's sidecar (its
provenance, the only map from case id to PatientID) goes with its folder; nothing else in the
archive names the study (the record of past failures, `fdn.dicom.failures`, holds only the
last run's studies that could not be imported).

An index built from the archive keeps the case until `fdn-index remove` (or
`fdn.archive_index.removal.remove_cases`) removes it there;
`fdn.archive_index.removal.remove_studies_and_cases` does that first, inside
`removing_studies`, so that queries stop returning the case before its images are deleted.
Importing the same study again later gives it the same case id (`fdn.dicom.pseudonyms`), which
the indexes that removed it keep leaving out.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from crashsafe import fsync_directory
from fdn.dicom.archive_writer import PARTIAL_PREFIX, archive_lock, clean_partial
from fdn.dicom.provenance import imported_studies
from fdn.errors import DicomImportError

log = logging.getLogger(__name__)


@contextmanager
def removing_studies(archive: str | Path, names: list[str]) -> Iterator[dict[str, str]]:
    """Under `archive`'s import lock, the imported studies `names` (case ids or
    StudyInstanceUIDs) as {case id: StudyInstanceUID}, yielded before anything is deleted; they
    are deleted when the block ends without an error, and an error deletes none. Every name
    is checked first: one the archive does not hold raises DicomImportError naming it.

    The block is where a caller removes the cases elsewhere first, so that queries stop
    returning a case before its images are deleted
    (`fdn.archive_index.removal.remove_studies_and_cases`: from index directories)."""
    archive = Path(archive)
    if not archive.is_dir():
        raise DicomImportError(f"{archive} does not exist; pass the archive import-dicom wrote")
    with archive_lock(archive):
        clean_partial(archive)
        cases = _resolve(archive, names)
        yield cases
        for case in cases:
            _delete_case(archive, case)
            log.info("%s: removed case %s (study %s)", archive, case, cases[case])


def remove_studies(archive: str | Path, names: list[str]) -> dict:
    """Delete the imported studies `names` from `archive` (`removing_studies`); returns
    `removal_report`, with no index."""
    with removing_studies(archive, names) as cases:
        pass
    return removal_report(archive, cases)


def removal_report(archive: str | Path, cases: dict[str, str], indexes: Sequence = ()) -> dict:
    """What a removal did: the archive, the cases removed (case, study_uid) and each index
    directory's removal (`fdn.archive_index.removal.remove_cases`), in the order given."""
    return {
        "archive": str(archive),
        "removed": [{"case": case, "study_uid": study} for case, study in cases.items()],
        "indexes": list(indexes),
    }


def _resolve(archive: Path, names: list[str]) -> dict[str, str]:
    """case id → StudyInstanceUID of each name, in the order given (each once)."""
    study_of_case = {case: study for study, case in imported_studies(archive).items()}
    case_of_study = {study: case for case, study in study_of_case.items()}
    cases: dict[str, str] = {}
    for name in dict.fromkeys(names):
        case = name if name in study_of_case else case_of_study.get(name)
        if case is None:
            raise DicomImportError(
                f"{archive}: no imported case or StudyInstanceUID {name!r} "
                f"({len(study_of_case)} imported cases); nothing was removed. The case ids are "
                "the folder names of the archive"
            )
        cases[case] = study_of_case[case]
    return cases


def _delete_case(archive: Path, case: str) -> None:
    """Rename the case folder away (atomic, durable), then delete it."""
    doomed = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}removed-", dir=archive))
    os.rename(archive / case, doomed / case)  # into an empty folder of the same file system
    fsync_directory(archive)
    shutil.rmtree(doomed)
