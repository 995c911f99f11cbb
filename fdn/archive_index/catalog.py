"""The cases of an index as the service lists them: slices, default slice, lesion summary."""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass

import numpy as np

from fdn.archive_index.searchable import SearchableIndex


@dataclass(frozen=True)
class CaseInfo:
    """What the slice table says about one case of an index."""

    case: str
    volume: int
    n_slices: int
    first_slice: int
    last_slice: int
    default_slice: int
    has_lesion: bool | None  # None when the case has no label file
    max_lesion_area: int | None
    lesion_slices: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def case_catalog(index: SearchableIndex) -> dict[str, CaseInfo]:
    """{case: CaseInfo} for every case of an open index, in index order, but the removed ones
    (`fdn-index remove`)."""
    rows_of = _case_rows(index)
    removed = index.removed_cases()
    slices = np.asarray(index.table["slice"]).astype(np.int64)
    areas = _lesion_areas(index.table["lesion_area"])
    catalog = {}
    for volume, case in enumerate(index.cases):  # cases are listed in volume order
        if case in removed:
            continue
        rows = rows_of[case]
        known = ~np.isnan(areas[rows])
        case_areas = areas[rows][known]
        has_label = bool(known.any())
        catalog[case] = CaseInfo(
            case=case,
            volume=volume,
            n_slices=len(rows),
            first_slice=int(slices[rows].min()),
            last_slice=int(slices[rows].max()),
            default_slice=int(index.default_slice(case)),
            has_lesion=bool((case_areas > 0).any()) if has_label else None,
            max_lesion_area=int(case_areas.max()) if has_label else None,
            lesion_slices=int((case_areas > 0).sum()) if has_label else None,
        )
    return catalog


_ROWS_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _case_rows(index: SearchableIndex) -> dict[str, np.ndarray]:
    """{case: (n,) int64 rows of the slice table}, computed in one pass and kept per index."""
    try:
        return _ROWS_CACHE[index]
    except (KeyError, TypeError):
        pass
    cases = np.asarray(index.table["case"]).astype(str)
    names, inverse = np.unique(cases, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(names) + 1))
    rows = {str(n): order[bounds[i] : bounds[i + 1]] for i, n in enumerate(names)}
    try:
        _ROWS_CACHE[index] = rows
    except TypeError:  # an index object that takes no weak reference: recompute each time
        pass
    return rows


def _lesion_areas(column) -> np.ndarray:
    """(N,) float64 lesion areas with NaN where the slice table has none."""
    return np.array([np.nan if a is None or a != a else float(a) for a in column], dtype=np.float64)
