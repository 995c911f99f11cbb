"""Case metadata: the columns a `--where` filter reads, beside `case`, `slice` and `lesion_area`.

A case's metadata come from two places, the second overriding the first column by column:

1. an imported DICOM case's sidecar (`CASE/CASE_dicom.json`, key ``metadata``), which
   `fdn-index import-dicom` fills from the headers (`fdn.dicom.case_metadata`): sex, age,
   study_date, manufacturer, manufacturer_model, field_strength, institution;
2. a table beside the archive's case folders, ``metadata.csv`` (commas) or ``metadata.tsv``
   (tabs): a header row naming ``case`` and any other columns, then one row per case::

       case,sex,age,study_date,scanner
       SYN_000,F,64,2020-01-31,GE
       SYN_001,M,,2019-11-02,SIEMENS

The build records each case's metadata in its journal entry (so a change re-encodes nothing
but that entry's metadata: the fingerprint of the case includes them), and assembly writes one
slice-table column per name (`metadata_columns`): numbers where every non-empty value is a
number, dates where every one is an ISO date (YYYY-MM-DD), text otherwise; an empty cell is a
null. A column name is a letter or _ followed by letters, digits or _, and none may be a
column the slice table already has.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import re
from pathlib import Path

from fdn.errors import ArchiveError

METADATA_FILES = ("metadata.csv", "metadata.tsv")
RESERVED = (
    "row",
    "case",
    "slice",
    "volume",
    "source",
    "lesion_area",
    "model_checksum",
    "study_uid",
    "series_uids",
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_TABLES: dict[str, tuple[tuple, dict]] = {}  # path -> (stat key, {case: {column: value}})


def _read_table(path: Path) -> dict[str, dict[str, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"{path}: unreadable ({exc}); fix or remove it") from None
    reader = csv.DictReader(io.StringIO(text), delimiter="\t" if path.suffix == ".tsv" else ",")
    names = [n.strip() for n in reader.fieldnames or []]
    if "case" not in names:
        raise ArchiveError(
            f"{path}: the header must name a 'case' column (found {', '.join(names) or 'none'})"
        )
    for name in names:
        if name != "case" and (not _NAME.match(name) or name in RESERVED):
            raise ArchiveError(
                f"{path}: column {name!r} cannot be a metadata column (a name of letters, "
                f"digits and _, not one of {', '.join(RESERVED)}); rename it"
            )
    rows: dict[str, dict[str, str]] = {}
    for line, row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        case = row.pop("case", "")
        if not case:
            raise ArchiveError(f"{path}: line {line} names no case")
        if case in rows:
            raise ArchiveError(f"{path}: case {case!r} appears twice (line {line})")
        rows[case] = row
    return rows


def archive_table(root: Path) -> dict[str, dict[str, str]]:
    """{case: {column: text}} of the archive's metadata table, or {} when it has none."""
    found = [Path(root) / name for name in METADATA_FILES if (Path(root) / name).is_file()]
    if len(found) > 1:
        raise ArchiveError(f"{root}: both {' and '.join(METADATA_FILES)}; keep one")
    if not found:
        return {}
    path = found[0]
    st = path.stat()
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _TABLES.get(str(path))
    if cached is None or cached[0] != key:
        _TABLES[str(path)] = cached = (key, _read_table(path))
    return cached[1]


def case_metadata(case_dir: str | Path, case: str) -> dict:
    """The metadata of one case (its folder `case_dir`): the DICOM sidecar's, then the
    archive table's row over them. {} when it has none."""
    from fdn.dicom.provenance import sidecar_path

    meta: dict = {}
    sidecar = sidecar_path(case_dir, case)
    if sidecar.is_file():
        try:
            stored = json.loads(sidecar.read_text()).get("metadata", {})
        except (OSError, ValueError, AttributeError):
            stored = {}
        if isinstance(stored, dict):
            meta.update({str(k): v for k, v in stored.items() if isinstance(v, (str, int, float))})
    meta.update(archive_table(Path(case_dir).parent).get(case, {}))
    return meta


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _date(value) -> datetime.date | None:
    if not isinstance(value, str) or not _DATE.match(value):
        return None
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        return None


def metadata_columns(per_case: list[dict]) -> dict[str, tuple[str, list]]:
    """{column: (kind, (V,) values)} of the cases' metadata, kind "number", "date" or "text",
    None for a case without the column (or an empty cell)."""
    names = sorted({k for meta in per_case for k in meta if k not in RESERVED})
    columns: dict[str, tuple[str, list]] = {}
    for name in names:
        raw = [meta.get(name) for meta in per_case]
        raw = [None if v is None or (isinstance(v, str) and not v) else v for v in raw]
        present = [v for v in raw if v is not None]
        if present and all(_number(v) is not None for v in present):
            columns[name] = ("number", [None if v is None else _number(v) for v in raw])
        elif present and all(_date(v) is not None for v in present):
            columns[name] = ("date", [None if v is None else _date(v) for v in raw])
        else:
            columns[name] = ("text", [None if v is None else str(v) for v in raw])
    return columns
