"""What the last import into an archive could not import, so that a re-run tells old failures
from new ones (`ARCHIVE/.import-failures.json`).

A nightly sync that skips the same bad study every night must not fail every night: after each
run the skipped studies and unreadable files are recorded, and the next run marks each of its
own that is recorded exactly so (same study or file, series, file and reason) as ``known``.
`ImportReport.failed` counts only the new ones. A failure that may pass by itself (a PACS
retrieve that failed, an unexpected error) is marked ``transient`` and never becomes known, so it
fails every run it happens in. The file is written under the archive's import lock; an
unreadable one is read as empty (every failure is then new).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from crashsafe import atomic_write_json

log = logging.getLogger(__name__)

FAILURES_FILE = ".import-failures.json"
FORMAT = "fdn-import-failures"
_KEYS = ("study_uid", "series_uid", "file", "reason")
MAX_BYTES = 64 << 20


def _key(entry: dict) -> str:
    return json.dumps([entry.get(k) for k in _KEYS])


def _recorded(archive: Path) -> set[str]:
    path = archive / FAILURES_FILE
    if not path.is_file() or path.is_symlink():
        return set()
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ValueError(f"over {MAX_BYTES >> 20} MB")
        data = json.loads(path.read_bytes())
        entries = data["skipped"] + data["bad_files"] if data.get("format") == FORMAT else []
        return {_key(e) for e in entries if isinstance(e, dict)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        log.warning("%s: unreadable (%s); every failure of this run counts as new", path, error)
        return set()


def mark_known(archive: str | Path, report) -> None:
    """Set ``known`` on every skipped study and bad file of `report`, from the failures the
    previous run recorded, then record this run's (call it under the import lock)."""
    archive = Path(archive)
    before = _recorded(archive)
    for entry in [*report.skipped, *report.bad_files]:
        entry["known"] = not entry.get("transient", False) and _key(entry) in before
    lasting = [
        [{k: e.get(k) for k in _KEYS} for e in entries if not e.get("transient", False)]
        for entries in (report.skipped, report.bad_files)
    ]
    if before or any(lasting) or (archive / FAILURES_FILE).exists():
        atomic_write_json(
            archive / FAILURES_FILE,
            {"format": FORMAT, "format_version": 1, "skipped": lasting[0], "bad_files": lasting[1]},
        )
