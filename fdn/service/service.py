"""The query service: one open index, kept warm, behind the methods the HTTP routes call.

    service = QueryService.open("demo/index")
    service.query("SYN_010", 22, {"mode": "all", "topq": "6"})      # -> fdn.archive_index.queries.QueryResult
    with service.upload_folder() as folder:                         # a private temporary folder
        service.query_upload({"t1": folder / "part-t1", ...}, {"slice": "40"})  # files in it

Routes only translate HTTP to these calls and back (`fdn.service.app`). The index is never
written; uploads live in a private temporary folder, removed before the answer is sent
(`fdn.service.uploads` streams them there within `upload_limits`).
"""

from __future__ import annotations

import logging
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from fdn.archive_index.catalog import case_catalog
from fdn.archive_index.queries import (
    QueryError,
    QueryOptions,
    check_case,
    explain_hit,
    query_options,
    run_external_query,
    run_slice_query,
)
from fdn.archive_index.query_options import as_int
from fdn.data.labels import SEQUENCES
from fdn.errors import FdnError
from fdn.service.images import OVERLAYS, SliceImages
from fdn.service.uploads import GZIP_MAGIC, UPLOAD_KEYS, UploadLimits
from hashindex import DISTANCES, ENGINES, MODES

log = logging.getLogger(__name__)

CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_MAX_UPLOAD_BYTES = 256 * 1024 * 1024
# Per volume. Reading a case costs about 40 bytes per voxel of one volume at its peak, so 256³
# (a 1 mm brain; BraTS volumes have 8.9 M) bounds one upload's memory near 0.7 GB.
DEFAULT_MAX_VOXELS = 256 * 256 * 256
MAX_TOPQ = 100
MAX_PAGE = 500
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


def parse_bool(name: str, value) -> bool:
    """'true'/'false' (and 1/0, yes/no, on/off) -> bool; QueryError otherwise."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise QueryError(f"{name} must be true or false; got {value!r}")


def parse_options(params) -> dict:
    """The query options of request parameters (strings) as keyword arguments of
    `fdn.archive_index.queries.query_options`; unknown values are refused there, with the CLI's messages."""
    mode = params.get("mode")
    nprobe = params.get("nprobe")
    return dict(
        # absent or empty: sum; anything else is a list whose every entry must be a mode, so
        # "mode=," is refused rather than read as the default
        mode=["sum"] if mode in (None, "") else [m.strip() for m in str(mode).split(",")],
        distance=params.get("distance") or None,  # absent or empty: each mode's best
        topq=params.get("topq") or 10,
        # "backend" is the name an earlier API used for the engine
        engine=params.get("engine") or params.get("backend") or None,
        nprobe=None if nprobe in (None, "") else nprobe,
        normalized_sum=parse_bool("normalized_sum", params.get("normalized_sum", "")),
        include_same_volume=parse_bool(
            "include_same_volume", params.get("include_same_volume", "")
        ),
        # a filter on the slice table (`fdn.archive_index.where`); absent or empty: none
        where=params.get("where") or None,
        # a box x0,y0,x1,y1 on the query slice (`fdn.archive_index.region`); never a mask
        # file: no path from a request reaches the file system
        region=params.get("region") or None,
        explain=parse_bool("explain", params.get("explain", "")),
    )


class QueryService:
    """An open index with its case catalogue, slice images and locks; built once at start-up."""

    def __init__(
        self,
        index,
        *,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        max_voxels: int = DEFAULT_MAX_VOXELS,
        cache_bytes: int = 512 * 2**20,
        max_concurrent_uploads: int = 2,
        scratch_dir: str | Path | None = None,
        upload_idle_seconds: float = 10.0,
        upload_min_bytes_per_second: float = 32 * 1024,
    ):
        self.index = index
        self.catalog = case_catalog(index)
        self.images = SliceImages(index, max_bytes=cache_bytes)
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_voxels = int(max_voxels)
        self.upload_limits = UploadLimits(
            max_bytes=self.max_upload_bytes,
            max_voxels=self.max_voxels,
            idle_seconds=float(upload_idle_seconds),
            min_bytes_per_second=float(upload_min_bytes_per_second),
        )
        # Each upload being read costs up to max_voxels worth of memory: bound how many run at
        # once (a slot is held from the first byte received to the answer).
        self.max_concurrent_uploads = max(1, int(max_concurrent_uploads))
        self.upload_slots = threading.BoundedSemaphore(self.max_concurrent_uploads)
        self.scratch_dir = None if scratch_dir is None else Path(scratch_dir)
        self.search_lock = (
            threading.Lock()
        )  # the compiled kernels are driven by one thread at a time
        self.encode_lock = threading.Lock()
        self.started = time.time()

    @classmethod
    def open(cls, index_dir: str | Path, **settings) -> QueryService:
        from fdn.archive_index.retrieval import open_index

        return cls(open_index(index_dir), **settings)

    def warm_up(self) -> float:
        """Load the model and run one query per mode (Numba's first call); seconds taken."""
        started = time.perf_counter()
        size = self.index.manifest.input_size
        self.index.encode(np.zeros((4, size, size), np.float32))  # loads the model, runs it once
        case = self.index.cases[0]
        run_slice_query(self.index, case, None, query_options("all", topq=1), lock=self.search_lock)
        return time.perf_counter() - started

    # --- what the routes call -----------------------------------------------------------------

    def info(self) -> dict:
        m = self.index.manifest
        return {
            "index": Path(self.index.index_dir).name,
            "n_cases": m.n_cases,
            "n_slices": m.n_slices,
            "preset": m.preset,
            "input_size": m.input_size,
            "grid": list(m.grid),
            "model_checksum": m.model_checksum,
            "fdn_index_version": m.fdn_index_version,
            "modes": [*MODES, "all"],
            "distances": list(DISTANCES),
            "engines": list(ENGINES),
            "sequences": list(SEQUENCES),
            "overlays": list(OVERLAYS),
            "upload_keys": list(UPLOAD_KEYS),
            "max_topq": MAX_TOPQ,
            "max_upload_bytes": self.max_upload_bytes,
            "max_voxels": self.max_voxels,
        }

    def health(self) -> dict:
        return {
            "status": "ok",
            "n_slices": self.index.ntotal,
            "uptime_seconds": round(time.time() - self.started, 3),
        }

    def cases(self, params) -> dict:
        """A page of the case catalogue: q (substring of the id), has_lesion, offset, limit."""
        q = str(params.get("q", "") or "")
        has_lesion = params.get("has_lesion")
        offset = _bounded_int("offset", params.get("offset", 0), 0, None)
        limit = _bounded_int("limit", params.get("limit", 50), 1, MAX_PAGE)
        removed = self.index.removed_cases()  # removed since start-up: no longer listed
        selected = [
            c
            for c in self.catalog.values()
            if q.lower() in c.case.lower() and c.case not in removed
        ]
        if has_lesion not in (None, ""):
            wanted = parse_bool("has_lesion", has_lesion)
            selected = [c for c in selected if bool(c.has_lesion) == wanted]
        return {
            "total": len(selected),
            "offset": offset,
            "limit": limit,
            "cases": [c.to_dict() for c in selected[offset : offset + limit]],
        }

    def case(self, case: str) -> dict:
        return self.catalog[check_case(self.index, case)].to_dict()

    def slice_png(self, case: str, slice_index, sequence: str, overlays) -> bytes:
        return self.images.png(check_case(self.index, case), slice_index, sequence, overlays)

    def query(self, case: str, slice_index, params):
        """A query by a slice of the index; slice_index None or "" for the case's default."""
        options = query_options(**parse_options(params), max_topq=MAX_TOPQ)
        slice_index = None if slice_index in (None, "") else slice_index
        return run_slice_query(self.index, case, slice_index, options, lock=self.search_lock)

    def explain(self, params) -> dict:
        """Why a hit is at its distance from a query slice: case, slice (the query), hit_case,
        hit_slice, mode (one of normal, abnormal, sum) and the query options (distance,
        normalized_sum, region). The JSON of `explain_hit`, with the region echoed."""
        query, hit, mode, options = self._pair(params)
        with self.search_lock:
            explanation, region = explain_hit(
                self.index, query[0], query[1], hit[0], hit[1], mode, options
            )
        return {
            "query": {"case": query[0], "slice": query[1]},
            "hit": {"case": hit[0], "slice": hit[1]},
            "mode": mode,
            "region": None if region is None else region.to_dict(),
            "explanation": explanation,
        }

    def explain_png(self, params, overlays) -> bytes:
        """The explanation's contributions (both codebooks added) as a heat map over the query
        slice (side=query, the region's cells outlined) or the hit slice (side=hit)."""
        side = params.get("side") or "hit"
        if side not in ("query", "hit"):
            raise QueryError(f"side must be query or hit; got {side!r}")
        query, hit, mode, options = self._pair(params)
        with self.search_lock:
            explanation, region = explain_hit(
                self.index, query[0], query[1], hit[0], hit[1], mode, options
            )
        values = np.sum(
            [np.asarray(b["contributions"]) for b in explanation["books"].values()], axis=0
        )
        book = "abnormal" if mode == "abnormal" else "normal"
        outline = None if region is None or side == "hit" else region.positions[book]
        case, slice_index = query if side == "query" else hit
        sequence = params.get("sequence") or "flair"
        return self.images.heat_png(case, slice_index, values, sequence, overlays, outline)

    def _pair(self, params) -> tuple[tuple[str, int], tuple[str, int], str, QueryOptions]:
        """((case, slice), (hit_case, hit_slice), mode, options) of an explain request."""
        for name in ("case", "slice", "hit_case", "hit_slice"):
            if params.get(name) in (None, ""):
                raise QueryError(
                    f"{name} is required: ?case=ID&slice=Z&hit_case=ID&hit_slice=Z&mode=M"
                )
        options = query_options(**parse_options(params), max_topq=MAX_TOPQ)
        if len(options.modes) != 1:
            raise QueryError(f"mode must be one of normal, abnormal, sum; got {params['mode']!r}")
        query = (check_case(self.index, params["case"]), as_int("slice", params["slice"]))
        hit = (check_case(self.index, params["hit_case"]), as_int("hit_slice", params["hit_slice"]))
        return query, hit, options.modes[0], options

    @contextmanager
    def upload_folder(self) -> Iterator[Path]:
        """A private temporary folder (mode 700) for one upload, removed on exit whatever happens."""
        with tempfile.TemporaryDirectory(prefix="fdn-upload-", dir=self.scratch_dir) as tmp:
            yield Path(tmp)

    def query_upload(self, uploads: dict[str, Path], params):
        """A query by an uploaded case: {key: NIfTI file} for t1, t1ce, t2, flair (seg, anat
        optional), each file inside one `upload_folder()`; they are renamed into a case folder
        there and read like any external case."""
        options = query_options(**parse_options(params), max_topq=MAX_TOPQ)
        unknown = sorted(set(uploads) - set(UPLOAD_KEYS))
        if unknown:
            raise QueryError(
                f"unknown upload field(s) {', '.join(unknown)}; send {', '.join(UPLOAD_KEYS)}"
            )
        missing = [k for k in SEQUENCES if k not in uploads]
        if missing:
            raise QueryError(
                f"missing the {', '.join(missing)} sequence(s): send the four files "
                f"{', '.join(SEQUENCES)} (NIfTI, .nii or .nii.gz), seg and anat optional"
            )
        empty = [k for k, path in uploads.items() if path.stat().st_size == 0]
        if empty:
            raise QueryError(f"the {', '.join(empty)} upload(s) are empty; send NIfTI files")
        case_id = str(params.get("case_id") or "upload")
        if not CASE_ID.match(case_id):
            raise QueryError(
                f"case_id must be 1-64 letters, digits, '_', '.' or '-' (starting with a letter "
                f"or digit); got {case_id!r}"
            )
        slice_index = params.get("slice")
        slice_index = None if slice_index in (None, "") else slice_index
        folder = next(iter(uploads.values())).parent / "case" / case_id
        folder.mkdir(parents=True)
        for key, path in uploads.items():
            with open(path, "rb") as f:
                extension = ".nii.gz" if f.read(2) == GZIP_MAGIC else ".nii"
            path.rename(folder / f"{case_id}_{key}{extension}")
        try:
            return run_external_query(
                self.index,
                [folder],
                slice_index,
                options,
                max_voxels=self.max_voxels,
                lock=self.search_lock,
                encode_lock=self.encode_lock,
            )
        except FdnError as exc:
            # The same message as the CLI's, less the private folder's name.
            message = str(exc).replace(f"{folder}/", "").replace(str(folder), case_id)
            raise QueryError(message) from None


def _bounded_int(name: str, value, low: int, high: int | None) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise QueryError(f"{name} must be an integer; got {value!r}") from None
    if number < low or (high is not None and number > high):
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        raise QueryError(f"{name} must be {bound}; got {number}")
    return number
