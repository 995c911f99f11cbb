"""Running a query against an open index: the one code path of `fdn-index query`, the query
service (`fdn-index serve`) and library users.

    from fdn.archive_index.queries import query_options, run_slice_query, run_external_query
    result = run_slice_query(index, "SYN_003", 30, query_options("all", topq=6))
    result = run_external_query(
        index, ["scans/PAT_1/"], None, query_options("abnormal", distance="euclidean")
    )
    print(json.dumps(result.to_dict()))

`index` is any `SearchableIndex`: an `ArchiveIndex` (`open_index`) or a `ShardedIndex`
(`open_sharded`). A query is a slice of a case already in the index, or a slice of an external
case (its folder or its NIfTI files) read, validated and preprocessed exactly like an archive
case, then encoded with the index's own model. Either way the answer is a `QueryResult` whose
`to_dict()` is the one JSON schema shared by `query --json` and the HTTP API:

    {"query": "SYN_003 slice 30", "index": "...", "query_case": "SYN_003", "query_slice": 30,
     "external": false, "modes": [...], "distance": null, "engine": null, "topq": 6,
     "normalized_sum": false, "include_same_volume": false, "nprobe": null,
     "load_seconds": 0.0, "encode_seconds": 0.0, "query_seconds": 0.004,
     "results": {"normal": {"distance": "euclidean", "engine": "fastscan", "kernel": "avx2",
                 "search_seconds": 0.001, "hits": [{rank, row, case, slice, distance, source,
                 lesion_area}, ...]}, ...}}

A region query (`QueryOptions.region`) adds "region": the box or mask as given, the query
slice's voxel shape and the grid positions used (`Region.to_dict`); with `explain` each hit
carries "explanation": its distance and, per codebook, the (h, w) contributions that add up
to it (`hashindex.explain`).

The top-level "distance" and "engine" are those the query named (null: each mode's best
distance, `BEST_DISTANCES`, and the index's default engine for it); each mode's result says
which it ran with, and "kernel" the fastscan kernel that ran (vbmi, avx2 or portable; null for
the other engines).

The options are a `QueryOptions`, checked when it was made (`fdn.archive_index.query_options`),
so the CLI and the API refuse the same inputs with the same message (`QueryError`); the
distance and engine a query names none of are decided per mode (`QueryOptions.for_mode`) and
reported in the result.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fdn.archive_index.external_case import check_nifti_sizes, load_query_slice
from fdn.archive_index.query_options import QueryOptions, as_int, query_options
from fdn.archive_index.region import Region, query_slice_shape, resolve_region
from fdn.archive_index.searchable import Hit, SearchableIndex
from fdn.errors import QueryError, UnknownCaseError
from hashindex import fastscan_kernel

# The names callers of a query use, importable from here with the functions that take them.
__all__ = [
    "ModeResult",
    "QueryError",
    "QueryOptions",
    "QueryResult",
    "UnknownCaseError",
    "check_case",
    "check_slice",
    "explain_hit",
    "load_query_slice",
    "query_options",
    "run_external_query",
    "run_slice_query",
]

log = logging.getLogger(__name__)

DEFAULT_OPTIONS = QueryOptions()  # mode sum, its best distance, top 10, the default engine


@dataclass
class ModeResult:
    """The hits of one mode, the distance and engine that found them (and the engine's kernel,
    fastscan's only), and the time it took."""

    search_seconds: float
    hits: list[Hit]
    distance: str
    engine: str
    kernel: str | None = None


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
    # rows a filtered query (options.where) could return; None without a filter
    rows_passing: int | None = None
    # the region a region query compared (options.region resolved on the query slice)
    region: Region | None = None
    query_image: np.ndarray | None = field(default=None, repr=False)
    query_labels: tuple | None = field(default=None, repr=False)

    def hits(self, mode: str) -> list[Hit]:
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
            "where": o.where,
            "rows_passing": self.rows_passing,
            "region": None if self.region is None else self.region.to_dict(),
            "explain": o.explain,
            "load_seconds": self.load_seconds,
            "encode_seconds": self.encode_seconds,
            "query_seconds": self.query_seconds,
            "results": {
                m: {
                    "distance": r.distance,
                    "engine": r.engine,
                    "kernel": r.kernel,
                    "search_seconds": r.search_seconds,
                    "hits": [asdict(h) for h in r.hits],
                }
                for m, r in self.results.items()
            },
        }


def check_case(index: SearchableIndex, case: str) -> str:
    """`case` if it is a case of the index; UnknownCaseError naming a few that are otherwise."""
    if not isinstance(case, str) or index.volume_of(case) is None:
        shown = ", ".join(index.cases[:3])
        raise UnknownCaseError(
            f"no case {case!r} in this index ({len(index.cases)} cases, e.g. {shown})"
        )
    if case in index.removed_cases():
        raise UnknownCaseError(
            f"case {case!r} was removed from this index (`fdn-index remove`): it cannot be a "
            "query, and no query returns it"
        )
    return case


def check_slice(index: SearchableIndex, case: str, slice_index) -> int:
    """The slice number if (case, slice) is in the index; QueryError / UnknownCaseError otherwise."""
    check_case(index, case)
    slice_index = as_int("slice", slice_index)
    slices = index.slice_range(case)
    if slice_index not in slices:
        raise QueryError(
            f"case {case!r} has slices {min(slices)}..{max(slices)}; "
            f"slice {slice_index} is out of range"
        )
    return slice_index


def default_query_slice(index: SearchableIndex) -> tuple[str, int]:
    """(case, slice) a query runs on when it names none: the indexed slice with the largest
    lesion (ties: the first row), else the middle slice of the first case."""
    areas = np.asarray(index.table["lesion_area"], dtype=np.float64)  # NaN for a null
    removed = index.removed_cases()
    if removed:  # never a removed case's slice
        areas = np.where(np.isin(np.asarray(index.table["case"], object), list(removed)), 0, areas)
    if areas.size and np.nanmax(areas, initial=0) > 0:
        row = int(np.nanargmax(areas))
        return str(index.table.value("case", row)), int(index.table.value("slice", row))
    kept = [c for c in index.cases if c not in removed]
    if not kept:
        raise UnknownCaseError("every case of this index was removed (`fdn-index remove`)")
    return kept[0], index.default_slice(kept[0])


def run_slice_query(
    index: SearchableIndex,
    case: str,
    slice_index: int | None = None,
    options: QueryOptions = DEFAULT_OPTIONS,
    *,
    lock: threading.Lock | None = None,
) -> QueryResult:
    """Volume-wise top-Q for slice `slice_index` of `case`, a case of the index (its
    largest-lesion slice, else its middle one, when None).

    lock: held around each search (a shared index is searched by one thread at a time).
    """
    started = time.perf_counter()
    check_case(index, case)
    if slice_index is None:
        slice_index = index.default_slice(case)
    slice_index = check_slice(index, case, slice_index)
    row = index.row_of(case, slice_index)
    exclude = None if options.include_same_volume else index.volume_of(case)
    passing = None if options.where is None else index.passing_rows(options.where)
    normal, abnormal = index.codes_of_row(row)
    region = _indexed_region(index, options, case, row, slice_index)
    results = _search_modes(index, normal, abnormal, exclude, options, lock, region)
    return QueryResult(
        query=f"{case} slice {slice_index}",
        index=str(index.index_dir),
        query_case=case,
        query_slice=slice_index,
        external=False,
        options=options,
        results=results,
        query_seconds=time.perf_counter() - started,
        query_source=str(index.table.value("source", row)),
        rows_passing=passing,
        region=region,
    )


def _indexed_region(
    index: SearchableIndex, options: QueryOptions, case: str, row: int, slice_index: int
) -> Region | None:
    """The query's region on slice ``slice_index`` (row ``row``) of ``case``, a case of the
    index, whose voxel shape is read from its source file's header; None without a region."""
    if options.region is None:
        return None
    from fdn.data.archive import case_files_inside

    source = str(index.table.value("source", row))
    files = case_files_inside(source, case, index.manifest.archive_roots)
    return _resolve(index, options, query_slice_shape(files), slice_index)


def _resolve(index: SearchableIndex, options: QueryOptions, shape, slice_index: int) -> Region:
    assert options.region is not None
    h, w = index.manifest.grid
    grid = (int(h), int(w))
    return resolve_region(options.region, shape, {"normal": grid, "abnormal": grid}, slice_index)


def explain_hit(
    index: SearchableIndex,
    case: str,
    slice_index: int,
    hit_case: str,
    hit_slice: int,
    mode: str,
    options: QueryOptions = DEFAULT_OPTIONS,
) -> tuple[dict, Region | None]:
    """Why slice ``hit_slice`` of ``hit_case`` is at its distance from the query slice
    (``case``, ``slice_index``) in ``mode`` under ``options`` (distance, normalized sum,
    region): (the explanation's JSON, the region resolved on the query slice or None). The
    route behind the viewer's heat maps; the numbers are those `explain=True` gives a hit."""
    if mode not in options.modes:
        raise QueryError(f"mode {mode!r} is not among the query's modes {list(options.modes)}")
    slice_index = check_slice(index, case, slice_index)
    hit_slice = check_slice(index, hit_case, hit_slice)
    row = index.row_of(case, slice_index)
    region = _indexed_region(index, options, case, row, slice_index)
    normal, abnormal = index.codes_of_row(row)
    positions = None if region is None else region.positions
    hit_row = index.row_of(hit_case, hit_slice)
    return index.explain_row(normal, abnormal, hit_row, mode, options, positions), region


def run_external_query(
    index: SearchableIndex,
    paths: list[str | Path],
    slice_index: int | None = None,
    options: QueryOptions = DEFAULT_OPTIONS,
    *,
    max_voxels: int | None = None,
    lock: threading.Lock | None = None,
    encode_lock: threading.Lock | None = None,
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
    case_id, files = case_files_from_paths([Path(p) for p in paths])
    files = {k: v for k, v in files.items() if k != "pseudohealthy"}  # ground truth, not input
    if max_voxels is not None:
        check_nifti_sizes(case_id, files, max_voxels)
    image, seg, anat, slice_index = load_query_slice(
        files, index.manifest.input_size, case_id, slice_index
    )
    loaded = time.perf_counter()
    with encode_lock or nullcontext():
        normal, abnormal = index.encode(image)
    encoded = time.perf_counter()
    exclude = None if options.include_same_volume else index.volume_of(case_id)
    passing = None if options.where is None else index.passing_rows(options.where)
    region = None
    if options.region is not None:
        region = _resolve(index, options, query_slice_shape(files), slice_index)
    results = _search_modes(index, normal, abnormal, exclude, options, lock, region)
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
        rows_passing=passing,
        region=region,
        query_image=image,
        query_labels=(seg, anat),
    )


def _search_modes(
    index: SearchableIndex,
    normal: np.ndarray,
    abnormal: np.ndarray,
    exclude: int | None,
    options: QueryOptions,
    lock: threading.Lock | None,
    region: Region | None = None,
) -> dict[str, ModeResult]:
    positions = None if region is None else region.positions
    results = {}
    for m in options.modes:
        chosen = options.for_mode(m, index)
        assert chosen.distance is not None and chosen.engine is not None
        with lock or nullcontext():
            t0 = time.perf_counter()
            hits = index.search(normal, abnormal, m, chosen, exclude, positions)
            kernel = fastscan_kernel() if chosen.engine == "fastscan" else None
            results[m] = ModeResult(
                time.perf_counter() - t0, hits, chosen.distance, chosen.engine, kernel
            )
    log.debug("query: %s", {m: len(r.hits) for m, r in results.items()})
    return results
