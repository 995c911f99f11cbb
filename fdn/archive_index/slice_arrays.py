"""slice_arrays.npz: the columns of slices.parquet that a query reads, in numpy's own format, so
that a query imports and parses no Parquet (~0.15 s at 1M rows). It is derived from the
Parquet file at build time and records that file's sha256: a reader uses it only where the
manifest lists the same sha256 for slices.parquet, and reads slices.parquet otherwise (an
index built before it, or a slice table changed since). Its members:

    parquet_sha256          () str, the sha256 of the slices.parquet it was derived from
    columns                 (C,) str, the column names of slices.parquet, in order
    volume_counts           (V,) int64, the rows of each volume
    lesion_area             (N,) int32, -1 for a null
    values__NAME, codes__NAME   for each text column NAME (case, source, model_checksum, …):
                            its distinct values (K,) str and, per volume, (V,) int32 indices
                            into them (-1 for a null); every row of a volume holds one value
    numbers__NAME, dates__NAME  for each metadata column of numbers or dates: per volume, (V,)
                            float64 (NaN for a null) or datetime64[D] (NaT)

row, slice and volume are not stored: rows are 0..N-1, volumes contiguous and slices count
0, 1, … within each volume (`read_slice_table` checks all three), and the hash index holds
the volume of every row (volume_ids.npy), which the reader checks against volume_counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fdn.archive_index.layout import SLICES, fix_for
from fdn.archive_index.slice_table import SLICE_COLUMNS, SliceTable, typed_column
from fdn.errors import IndexDirError
from hashindex.checked_files import load_npz

_DERIVED = ("row", "slice", "volume", "lesion_area")


def derive_slice_arrays(table: SliceTable, parquet_sha256: str) -> bytes | None:
    """The bytes of slice_arrays.npz for a checked slice table, or None where a column does not
    fit its layout (a text column that varies within a volume, a lesion area past int32)."""
    import io

    n = len(table["volume"])
    members: dict[str, np.ndarray] = {
        "parquet_sha256": np.array(parquet_sha256),
        "columns": np.array(list(table), dtype=str),
        "volume_counts": table.counts.astype(np.int64),
    }
    area = table["lesion_area"]
    if area.dtype == object:  # a column of nulls only
        area = np.array([np.nan if a is None else a for a in area], dtype=np.float64)
    known = ~np.isnan(area) if area.dtype.kind == "f" else np.ones(n, bool)
    if np.any(area[known] < 0) or np.any(area[known] > np.iinfo(np.int32).max):
        return None
    members["lesion_area"] = np.where(known, np.nan_to_num(area), -1).astype(np.int32)
    volume = table["volume"]
    for name in table:
        if name in _DERIVED:
            continue
        column = table[name]
        typed = typed_column(column)
        if typed.dtype.kind in "fM":  # metadata: a number or a date per case
            per_volume = typed[table.starts]
            if n and not np.array_equal(typed, per_volume[volume], equal_nan=True):
                return None
            kind = "numbers" if typed.dtype.kind == "f" else "dates"
            members[f"{kind}__{name}"] = per_volume.astype(
                np.float64 if kind == "numbers" else "datetime64[D]"
            )
            continue
        per_volume = column[table.starts]
        if column.dtype != object or not all(
            v is None or isinstance(v, str) for v in per_volume.tolist()
        ):
            return None
        if n and not np.array_equal(column, per_volume[volume]):
            return None
        values = sorted({v for v in per_volume.tolist() if v is not None})
        stored = np.array(values, dtype=str)
        if stored.tolist() != values:  # numpy drops trailing NUL characters
            return None
        index = {v: i for i, v in enumerate(values)}
        members[f"values__{name}"] = stored
        members[f"codes__{name}"] = np.array(
            [-1 if v is None else index[v] for v in per_volume.tolist()], dtype=np.int32
        )
    out = io.BytesIO()
    np.savez(out, allow_pickle=False, **members)
    return out.getvalue()


def load_slice_arrays(data: bytes, path: Path) -> dict[str, np.ndarray]:
    """The members of slice_arrays.npz (its bytes, checked against the manifest);
    IndexDirError for a file numpy cannot read."""
    import io

    try:
        return load_npz(io.BytesIO(data))
    except Exception as exc:  # numpy raises ValueError, OSError, zipfile errors, …
        raise IndexDirError(
            f"{path}: unreadable ({type(exc).__name__}: {str(exc)[:80]}). {fix_for(path.parent)}."
        ) from None


def slice_arrays_source(members: dict[str, np.ndarray]) -> str:
    """The sha256 of the slices.parquet that slice_arrays.npz was derived from ('' if none)."""
    sha = members.get("parquet_sha256")
    return str(sha) if sha is not None and sha.dtype.kind == "U" and sha.ndim == 0 else ""


def read_slice_arrays(
    members: dict[str, np.ndarray],
    path: Path,
    *,
    volume: np.ndarray,
    n_cases: int,
    model_checksum: str,
) -> SliceTable:
    """The slice table from the members of slice_arrays.npz (`load_slice_arrays`) and the hash
    index's (N,) volume ids; IndexDirError naming the fault and the fix.

    The caller has checked that the file was derived from the slices.parquet the manifest lists
    (`slice_arrays_source`); that file's own checks hold for it, and are not repeated here.
    """
    fix = fix_for(path.parent)

    def bad(what: str) -> IndexDirError:
        return IndexDirError(f"{path}: {what}. {fix}.")

    for key in ("parquet_sha256", "columns", "volume_counts", "lesion_area"):
        if key not in members:
            raise bad(f"no member {key!r}")
    n = len(volume)
    names = members["columns"]
    counts = members["volume_counts"]
    area = members["lesion_area"]
    if names.dtype.kind != "U" or names.ndim != 1 or set(SLICE_COLUMNS) - set(names.tolist()):
        raise bad(f"'columns' should name the columns of {SLICES}")
    if counts.dtype != np.int64 or counts.shape != (n_cases,):
        raise bad(f"'volume_counts' should be ({n_cases},) int64 as the manifest says")
    if area.dtype != np.int32 or area.shape != (n,) or (n and int(area.min()) < -1):
        raise bad(f"'lesion_area' should be ({n},) int32, areas or -1")
    # volume v is rows starts[v] .. ends[v] - 1: the ids never decrease and are v at both ends
    ends = np.cumsum(counts)
    starts = ends - counts
    ids = np.arange(n_cases)
    if (
        (n_cases and int(counts.min()) < 1)
        or (int(ends[-1]) if n_cases else 0) != n
        or not np.array_equal(volume[starts], ids)
        or not np.array_equal(volume[ends - 1], ids)
        or np.any(volume[1:] < volume[:-1])
    ):
        raise bad(
            f"the hash index's volumes (volume_ids.npy, {n} rows) differ from the "
            f"{n_cases} volumes of {sum(counts.tolist())} rows recorded here"
        )
    text: dict[str, list | np.ndarray] = {}
    for name in names.tolist():
        if name in _DERIVED:
            continue
        numbers, dates = members.get(f"numbers__{name}"), members.get(f"dates__{name}")
        stored = numbers if numbers is not None else dates
        if stored is not None:
            want = np.dtype(np.float64) if numbers is not None else np.dtype("datetime64[D]")
            if stored.dtype != want or stored.shape != (n_cases,):
                raise bad(f"column {name!r} should be ({n_cases},) {want}")
            text[name] = stored
            continue
        values, codes = members.get(f"values__{name}"), members.get(f"codes__{name}")
        if (
            values is None
            or codes is None
            or values.dtype.kind != "U"
            or values.ndim != 1
            or codes.dtype != np.int32
            or codes.shape != (n_cases,)
            or (n_cases and not -1 <= int(codes.min()) <= int(codes.max()) < len(values))
        ):
            raise bad(
                f"column {name!r} should be values__{name} (K,) str, codes__{name} "
                f"({n_cases},) int32 in -1..K-1"
            )
        listed = values.tolist() + [None]  # code -1: a null
        text[name] = [listed[c] for c in codes.tolist()]
    for name in ("case", "source", "model_checksum"):
        if not isinstance(text[name], list) or None in text[name]:
            raise bad(f"column {name!r} should be text without nulls")
    cases = list(text["case"])
    if len(set(cases)) != len(cases):
        raise bad("a case appears as more than one volume")
    if n and set(text["model_checksum"]) != {model_checksum}:
        raise bad(f"rows encoded with another model than the manifest's ({model_checksum[:12]}…)")
    return SliceTable(volume, starts, cases, names=names.tolist(), text=text, lesion_area=area)
