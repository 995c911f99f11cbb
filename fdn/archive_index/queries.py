"""Running a query against an open index: the one code path of `fdn-index query`, the query
service (`fdn-index serve`) and library users.

    from fdn.archive_index.queries import run_slice_query, run_external_query
    result = run_slice_query(index, "SYN_003", 30, "all", topq=6)
    result = run_external_query(index, ["scans/PAT_1/"], None, "abnormal", distance="euclidean")
    print(json.dumps(result.to_dict()))

A query is a slice of a case already in the index, or a slice of an external case (its folder or
its NIfTI files) read, validated and preprocessed exactly like an archive case, then encoded
with the index's own model. Either way the answer is a `QueryResult` whose `to_dict()` is the
one JSON schema shared by `query --json` and the HTTP API:

    {"query": "SYN_003 slice 30", "index": "...", "query_case": "SYN_003", "query_slice": 30,
     "external": false, "modes": [...], "distance": "hamming", "engine": "fastscan", "topq": 6,
     "normalized_sum": false, "include_same_volume": false, "nprobe": null,
     "load_seconds": 0.0, "encode_seconds": 0.0, "query_seconds": 0.004,
     "results": {"normal": {"search_seconds": 0.001, "hits": [{rank, row, case, slice,
                 distance, source, lesion_area}, ...]}, ...}}

Every option is checked here, before any work, so the CLI and the API refuse the same inputs
with the same message (`QueryError`).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fdn.errors import FdnError
from hashindex import DISTANCES, ENGINES, MODES

log = logging.getLogger(__name__)

ALL_MODES = "all"
MODE_CHOICES = (*MODES, ALL_MODES)


class QueryError(FdnError, ValueError):
    """A query's inputs are invalid: an unknown option value, case or slice, or an unusable
    external case. The message says what was given, what is allowed, and how to fix it."""


class UnknownCaseError(QueryError):
    """The query names a case that is not in the index."""


@dataclass(frozen=True)
class QueryOptions:
    """The search options of a query, checked. `modes` is the list of modes to run."""

    modes: tuple[str, ...]
    distance: str = "hamming"
    topq: int = 10
    engine: str | None = None  # None: the index's default_engine (fastscan where it applies)
    nprobe: int | None = None
    normalized_sum: bool = False
    include_same_volume: bool = False

    def search_options(self) -> dict:
        """Keyword arguments of `ArchiveIndex.search_codes`, less mode and exclude_volume."""
        return dict(
            distance=self.distance,
            topq=self.topq,
            engine=self.engine,
            nprobe=self.nprobe,
            normalized_sum=self.normalized_sum,
        )


def query_options(
    mode: str | list[str] | tuple[str, ...] = "sum",
    *,
    distance: str = "hamming",
    topq: int = 10,
    engine: str | None = None,
    nprobe: int | None = None,
    normalized_sum: bool = False,
    include_same_volume: bool = False,
    max_topq: int | None = None,
) -> QueryOptions:
    """Check the options of a query; QueryError names the bad one and what is allowed.

    mode: one of normal, abnormal, sum, all (all three), or a list of modes.
    engine: one of ENGINES, or None for the index's default (fastscan when both codebooks have
    at most 256 distinct vectors, else lut; both exact).
    max_topq: an upper bound on topq (the service sets one), None for none.
    """
    modes = [mode] if isinstance(mode, str) else list(mode)
    if not modes:
        raise QueryError(f"mode must be one of {', '.join(MODE_CHOICES)}; got none")
    expanded: list[str] = []
    for m in modes:
        if m not in MODE_CHOICES:
            raise QueryError(f"mode must be one of {', '.join(MODE_CHOICES)}; got {m!r}")
        for one in MODES if m == ALL_MODES else (m,):
            if one not in expanded:
                expanded.append(one)
    if distance not in DISTANCES:
        raise QueryError(f"distance must be one of {', '.join(DISTANCES)}; got {distance!r}")
    if engine is not None and engine not in ENGINES:
        raise QueryError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    topq = _as_int("topq", topq)
    if topq < 1:
        raise QueryError(f"topq must be at least 1; got {topq}")
    if max_topq is not None and topq > max_topq:
        raise QueryError(f"topq must be at most {max_topq}; got {topq}")
    if nprobe is not None:
        nprobe = _as_int("nprobe", nprobe)
        if nprobe < 1:
            raise QueryError(f"nprobe must be at least 1; got {nprobe}")
    return QueryOptions(
        modes=tuple(expanded),
        distance=distance,
        topq=topq,
        engine=engine,
        nprobe=nprobe,
        normalized_sum=bool(normalized_sum),
        include_same_volume=bool(include_same_volume),
    )


def _as_int(name: str, value) -> int:
    if isinstance(value, bool):
        raise QueryError(f"{name} must be an integer; got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise QueryError(f"{name} must be an integer; got {value!r}") from None
    if isinstance(value, float) and value != number:
        raise QueryError(f"{name} must be an integer; got {value!r}")
    return number


@dataclass
class ModeResult:
    """The hits of one mode and the time the search took."""

    search_seconds: float
    hits: list  # [fdn.archive_index.retrieval.Hit]


@dataclass
class QueryResult:
    """The answer to one query: the query's identity, the options, and the hits of each mode.

    `query_image` and `query_labels` hold the preprocessed query slice of an external case
    ((4, S, S) float32; (seg, anat) (S, S) uint8 or None), for montages; they are not part of
    `to_dict()`.
    """

    query: str
    index: str
    query_case: str
    query_slice: int
    external: bool
    options: QueryOptions
    results: dict[str, ModeResult]
    load_seconds: float = 0.0
    encode_seconds: float = 0.0
    query_seconds: float = 0.0
    query_source: str | None = None
    query_image: np.ndarray | None = field(default=None, repr=False)
    query_labels: tuple | None = field(default=None, repr=False)

    def hits(self, mode: str) -> list:
        return self.results[mode].hits

    def to_dict(self) -> dict:
        """The JSON schema shared by `fdn-index query --json` and the HTTP API."""
        o = self.options
        return {
            "query": self.query,
            "index": self.index,
            "query_case": self.query_case,
            "query_slice": self.query_slice,
            "external": self.external,
            "modes": list(o.modes),
            "distance": o.distance,
            "engine": o.engine,
            "topq": o.topq,
            "normalized_sum": o.normalized_sum,
            "include_same_volume": o.include_same_volume,
            "nprobe": o.nprobe,
            "load_seconds": self.load_seconds,
            "encode_seconds": self.encode_seconds,
            "query_seconds": self.query_seconds,
            "results": {
                m: {"search_seconds": r.search_seconds, "hits": [asdict(h) for h in r.hits]}
                for m, r in self.results.items()
            },
        }


# --- cases of an index -------------------------------------------------------------------------


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


def case_catalog(index) -> dict[str, CaseInfo]:
    """{case: CaseInfo} for every case of an open index, in index order."""
    rows_of = _case_rows(index)
    slices = np.asarray(index.table["slice"]).astype(np.int64)
    areas = _lesion_areas(index.table["lesion_area"])
    catalog = {}
    for case in index.cases:
        rows = rows_of[case]
        known = ~np.isnan(areas[rows])
        case_areas = areas[rows][known]
        has_label = bool(known.any())
        catalog[case] = CaseInfo(
            case=case,
            volume=int(index.volume_of(case)),
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
_SLICES_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _case_rows(index) -> dict[str, np.ndarray]:
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


def _case_slices(index, case: str) -> frozenset:
    try:
        per_case = _SLICES_CACHE[index]
    except (KeyError, TypeError):
        slices = np.asarray(index.table["slice"]).astype(np.int64)
        per_case = {c: frozenset(slices[r].tolist()) for c, r in _case_rows(index).items()}
        try:
            _SLICES_CACHE[index] = per_case
        except TypeError:
            pass
    return per_case[case]


def _cell(table, name: str, row: int):
    """One cell of a slice table: an index's `SliceTable` gives it without making the column
    (a column of text is ~10 ms at 1M rows); a sharded index's table is a dict of columns."""
    return table.value(name, row) if hasattr(table, "value") else table[name][row]


def _lesion_areas(column) -> np.ndarray:
    """(N,) float64 lesion areas with NaN where the slice table has none."""
    return np.array([np.nan if a is None or a != a else float(a) for a in column], dtype=np.float64)


def check_case(index, case: str) -> str:
    """`case` if it is a case of the index; UnknownCaseError naming a few that are otherwise."""
    if not isinstance(case, str) or index.volume_of(case) is None:
        shown = ", ".join(index.cases[:3])
        raise UnknownCaseError(
            f"no case {case!r} in this index ({len(index.cases)} cases, e.g. {shown})"
        )
    return case


def check_slice(index, case: str, slice_index) -> int:
    """The slice number if (case, slice) is in the index; QueryError / UnknownCaseError otherwise."""
    check_case(index, case)
    slice_index = _as_int("slice", slice_index)
    # an index that knows each case's slices answers at once; else one pass over the table
    slices = index.slice_range(case) if hasattr(index, "slice_range") else _case_slices(index, case)
    if slice_index not in slices:
        raise QueryError(
            f"case {case!r} has slices {min(slices)}..{max(slices)}; "
            f"slice {slice_index} is out of range"
        )
    return slice_index


# --- running queries ---------------------------------------------------------------------------


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def run_slice_query(
    index,
    case: str,
    slice_index: int | None = None,
    mode: str | list[str] = "sum",
    *,
    options: QueryOptions | None = None,
    lock: threading.Lock | None = None,
    **option_values,
) -> QueryResult:
    """Volume-wise top-Q for slice `slice_index` of `case`, a case of the index (its
    largest-lesion slice, else its middle one, when None).

    option_values: those of `query_options` (distance, topq, engine, nprobe, normalized_sum,
    include_same_volume), or pass checked `options`. lock: held around each search (a shared
    index is searched by one thread at a time).
    """
    started = time.perf_counter()
    options = options or query_options(mode, **option_values)
    check_case(index, case)
    if slice_index is None:
        slice_index = index.default_slice(case)
    slice_index = check_slice(index, case, slice_index)
    row = index.row_of(case, slice_index)
    exclude = None if options.include_same_volume else index.volume_of(case)
    options = _with_engine(options, index)
    normal, abnormal = index.codes_of_row(row)
    results = _search_modes(index, normal, abnormal, exclude, options, lock)
    return QueryResult(
        query=f"{case} slice {slice_index}",
        index=str(index.index_dir),
        query_case=case,
        query_slice=slice_index,
        external=False,
        options=options,
        results=results,
        query_seconds=time.perf_counter() - started,
        query_source=str(_cell(index.table, "source", row)),
    )


def run_external_query(
    index,
    paths: list[str | Path],
    slice_index: int | None = None,
    mode: str | list[str] = "sum",
    *,
    options: QueryOptions | None = None,
    max_voxels: int | None = None,
    lock: threading.Lock | None = None,
    encode_lock: threading.Lock | None = None,
    **option_values,
) -> QueryResult:
    """Volume-wise top-Q for a slice of an external case: its folder, or its NIfTI files
    (CASE_t1.nii.gz, CASE_t1ce…, CASE_t2…, CASE_flair…; optional _seg, _anat).

    The case is read, validated and preprocessed like an archive case (`load_case_files`) and
    the slice (default: its largest-lesion slice, else the middle one) is encoded with the
    index's model. A case id that is also in the index is excluded from the hits unless
    include_same_volume. max_voxels: refuse volumes larger than this before reading their
    data (the service sets it). Raises QueryError, or ArchiveError for a bad case.
    """
    from fdn.data import case_files_from_paths

    started = time.perf_counter()
    options = options or query_options(mode, **option_values)
    case_id, files = case_files_from_paths([Path(p) for p in paths])
    files = {k: v for k, v in files.items() if k != "pseudohealthy"}  # ground truth, not input
    if max_voxels is not None:
        check_nifti_sizes(case_id, files, max_voxels)
    image, seg, anat, slice_index = load_query_slice(
        files, index.manifest.input_size, case_id, slice_index
    )
    loaded = time.perf_counter()
    with encode_lock or _NoLock():
        normal, abnormal = index.encode(image)
    encoded = time.perf_counter()
    exclude = None if options.include_same_volume else index.volume_of(case_id)
    options = _with_engine(options, index)
    results = _search_modes(index, normal, abnormal, exclude, options, lock)
    return QueryResult(
        query=f"{case_id} slice {slice_index} (external)",
        index=str(index.index_dir),
        query_case=case_id,
        query_slice=slice_index,
        external=True,
        options=options,
        results=results,
        load_seconds=loaded - started,
        encode_seconds=encoded - loaded,
        query_seconds=time.perf_counter() - started,
        query_image=image,
        query_labels=(seg, anat),
    )


def load_query_slice(files: dict[str, Path], size: int, case_id: str, slice_index: int | None):
    """One preprocessed slice of an external case, equal to `load_case_files(...)` at that slice.

    The case is read and validated whole (`read_case`) and z-scored over its whole brain, as
    `preprocess` does, but only the query slice is resized: the resizing of every other slice
    is most of the cost of preprocessing a BraTS-size case. The default slice is chosen on the
    resized lesion labels, as the CLI always did. Returns image (4, S, S) float32, seg and anat
    (S, S) uint8 or None, and the slice number. QueryError for a slice out of range.
    """
    from fdn.data.case import preprocess, read_case, zscore
    from fdn.data.render import default_slice
    from fdn.data.resize import resize_images, resize_labels

    raw = read_case(files, case_id)
    depth = raw.image.shape[3]
    if slice_index is None:
        seg = None if raw.seg is None else resize_labels(np.transpose(raw.seg, (2, 0, 1)), size)
        slice_index = default_slice(None if seg is None else np.moveaxis(seg, 0, -1), depth)
    slice_index = _as_int("slice", slice_index)
    if not 0 <= slice_index < depth:
        raise QueryError(
            f"{case_id} has slices 0..{depth - 1}; slice {slice_index} is out of range"
        )
    brain = np.any(raw.image != 0, axis=0)  # (H, W, Z)
    mean, std = zscore(raw.image, brain) if brain.any() else (None, None)
    if mean is None or np.any(std <= 1e-6 * np.maximum(np.abs(mean), 1)):
        preprocess(raw, size)  # raises the archive reader's own error for this case
    assert mean is not None and std is not None  # preprocess raised otherwise
    shift = mean.astype(np.float32).reshape(-1, 1, 1)
    scale = std.astype(np.float32).reshape(-1, 1, 1)
    x = raw.image[..., slice_index]  # (C, H, W)
    z = np.where(brain[..., slice_index], (x - shift) / scale, np.float32(0))
    image = resize_images(z[None], size)[0]

    def labels(y):
        return None if y is None else resize_labels(y[None, :, :, slice_index], size)[0]

    return image, labels(raw.seg), labels(raw.anat), slice_index


def check_nifti_sizes(case_id: str, files: dict[str, Path], max_voxels: int) -> None:
    """Refuse a file whose header declares more than `max_voxels` voxels (or is no NIfTI), before
    its data is read, so that a crafted header cannot make a reader allocate gigabytes."""
    import nibabel as nib

    from fdn.data.case import CaseError

    for key, path in files.items():
        try:
            header: Any = nib.load(path)  # reads the header only
            shape = tuple(int(n) for n in header.shape)
        except Exception as exc:  # nibabel raises many types for a file that is not NIfTI
            raise CaseError(
                case_id,
                Path(Path(path).name),
                f"not a readable NIfTI file ({type(exc).__name__}: "
                f"{exc}); send the {key} sequence as .nii or .nii.gz",
            ) from None
        voxels = int(np.prod(shape, dtype=np.int64)) if shape else 0
        if voxels > max_voxels:
            raise CaseError(
                case_id,
                Path(Path(path).name),
                f"the {key} volume has shape {shape} "
                f"({voxels:,} voxels); at most {max_voxels:,} voxels are accepted",
            )


def _with_engine(options: QueryOptions, index) -> QueryOptions:
    """``options`` with the index's default engine for their distance where they name none."""
    from fdn.archive_index.retrieval import engine_for_distance

    if options.engine:
        return options
    return replace(options, engine=engine_for_distance(index.default_engine, options.distance))


def _search_modes(index, normal, abnormal, exclude, options: QueryOptions, lock) -> dict:
    results = {}
    for m in options.modes:
        with lock or _NoLock():
            t0 = time.perf_counter()
            hits = index.search_codes(
                normal, abnormal, mode=m, exclude_volume=exclude, **options.search_options()
            )
            results[m] = ModeResult(time.perf_counter() - t0, hits)
    log.debug("query: %s", {m: len(r.hits) for m, r in results.items()})
    return results
