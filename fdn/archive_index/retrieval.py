"""Open an index directory and answer queries: the library side of `fdn-index query`.

    index = open_index("index/")
    hits = index.query_slice("SYN_003", 30, mode="abnormal", topq=10)
    for hit in hits:
        print(hit.rank, hit.case, hit.slice, hit.distance)

`ArchiveIndex` is a `SearchableIndex` (`fdn.archive_index.searchable`): its `search` takes
checked `QueryOptions`. A query is a slice already in the index (`query_slice`) or the codes of
any 4-channel image encoded with the index's own model (`encode`, then `search_codes`); those
two make their `QueryOptions` from keywords, for library users. `fdn.archive_index.queries`
runs both kinds for the command line and the service. Hits are volume-wise (4.4.6): each from
a different volume, at its closest slice, the query's own volume excluded unless asked for.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fdn.errors import IndexDirError

if TYPE_CHECKING:  # the model loads torch, which a slice query never needs
    from fdn.model import FDN
from fdn.archive_index.brain_area import LESION_MODES, read_lesion_rows
from fdn.archive_index.layout import CODES, MODEL_DIR, MODEL_FILES, SLICE_ARRAYS, SLICES, fix_for
from fdn.archive_index.locks import swap_lock
from fdn.archive_index.manifest import Manifest, read_listed, read_manifest
from fdn.archive_index.query_options import QueryOptions
from fdn.archive_index.searchable import Hit
from fdn.archive_index.slice_arrays import load_slice_arrays, read_slice_arrays, slice_arrays_source
from fdn.archive_index.slice_table import SliceTable, read_slice_table
from fdn.archive_index.tombstones import TombstoneWatch, case_digest
from fdn.archive_index.where import where_mask
from hashindex import HashIndex, index_files
from hashindex.errors import HashIndexError

log = logging.getLogger(__name__)


class ArchiveIndex:
    """A finished index directory, loaded for search. Use `open_index` to make one."""

    def __init__(
        self,
        index_dir: Path,
        manifest: Manifest,
        table: SliceTable,
        hash_index: HashIndex,
        *,
        verify: bool = True,
        lesion_rows: np.ndarray | None = None,
    ):
        self.index_dir = Path(index_dir)
        self.manifest = manifest
        # column name -> (N,) array, converted on first access; row i describes codes[i]
        self.table = table
        self.hash_index = hash_index
        self.verify = verify
        self._volume_of_case = {c: v for v, c in enumerate(table.cases)}
        self._model = None
        self._codes: tuple[np.ndarray, np.ndarray] | None = None
        self._tombstones = TombstoneWatch(self.index_dir)
        self._digest_of_case: dict[str, str] | None = None
        # (the digests the mask was made for, the removed cases, the mask or None)
        self._removed: tuple[frozenset, frozenset[str], np.ndarray | None] | None = None
        self._filters: dict[str, np.ndarray] = {}  # --where text -> (N,) bool, the last few
        # (N,) bool rows with enough brain to be a lesion query's hit (`brain_area`), read with
        # the other files at open; None for an index that records no brain share
        self.lesion_rows = lesion_rows

    @property
    def ntotal(self) -> int:
        return self.hash_index.ntotal

    def default_engine(self, distance: str, position_mask: bool = False) -> str:
        """The engine a query of ``distance`` runs on unless it names one (the hash index's
        registry decides: `HashIndex.default_engine`; ``position_mask``: a region query); every
        default is exact."""
        return self.hash_index.default_engine(distance, position_mask)

    @property
    def codes_normal(self) -> np.ndarray:
        """(N, h, w) uint16 codes of codes.zarr, read and checked on first use (queries never
        need them: `codes_of_row` takes a row's codes from the hash index)."""
        return self._code_arrays()[0]

    @property
    def codes_abnormal(self) -> np.ndarray:
        """(N, h, w) uint16, as `codes_normal`."""
        return self._code_arrays()[1]

    def _code_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._codes is None:
            with swap_lock(self.index_dir, shared=True):
                self._codes = _read_codes(self.index_dir, self.manifest, self.verify)
        return self._codes

    def codes_of_row(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The code grids (normal, abnormal), each (h, w) uint16, of one row, as the hash
        index stores them (`HashIndex.reconstruct`: every code is its representative, so a
        search with them gives the answer the codes of codes.zarr give)."""
        return self.hash_index.reconstruct(int(row))

    @property
    def cases(self) -> list[str]:
        return list(self._volume_of_case)

    def volume_of(self, case: str) -> int | None:
        """The volume id of `case`, or None when the case is not in this index."""
        return self._volume_of_case.get(case)

    def default_slice(self, case: str) -> int:
        """The slice of `case` with the largest lesion, else its middle slice."""
        self.row_of(case, 0)  # raises the unknown-case error
        volume = self._volume_of_case[case]
        start = self.table.starts[volume]
        rows = np.arange(start, start + self.table.counts[volume])
        from fdn.data.labels import largest_lesion_slice  # not render: no nibabel

        areas = [self.table.value("lesion_area", row) for row in rows]  # not the whole column
        return int(self.table.value("slice", rows[largest_lesion_slice(areas)]))

    def slice_range(self, case: str) -> range:
        """The slice numbers of ``case`` (IndexDirError for a case not in the index)."""
        self.row_of(case, 0)  # raises the unknown-case error
        return self.table.slice_range(self._volume_of_case[case])

    def _removal(self) -> tuple[frozenset[str], np.ndarray | None]:
        """(the cases of this index removed by `fdn-index remove`, (N,) bool rows a query may
        return or None when none is removed), made again whenever removed.json changes."""
        digests = self._tombstones.digests()
        if self._removed is None or self._removed[0] is not digests:
            if self._digest_of_case is None:
                self._digest_of_case = {c: case_digest(c) for c in self._volume_of_case}
            gone = frozenset(c for c, d in self._digest_of_case.items() if d in digests)
            mask = None
            if gone:
                volumes = [self._volume_of_case[c] for c in gone]
                mask = ~np.isin(np.asarray(self.hash_index.volume_ids), volumes)
            self._removed = (digests, gone, mask)
        return self._removed[1], self._removed[2]

    def removed_cases(self) -> frozenset[str]:
        """The cases of this index that `fdn-index remove` removed: no query returns them, and
        none may be a query until compaction deletes them."""
        return self._removal()[0]

    def allowed_rows(self) -> np.ndarray | None:
        """(N,) bool: the rows a query may return (every row of a case not removed), or None
        when every row may be returned."""
        return self._removal()[1]

    def where_rows(self, where: str) -> np.ndarray:
        """(N,) bool: the rows of the slice table that pass the filter ``where``
        (`fdn.archive_index.where`); WhereError for an unknown column or a type mismatch."""
        if where not in self._filters:
            if len(self._filters) >= 8:  # a server sees many filters: keep the last few
                self._filters.pop(next(iter(self._filters)))
            self._filters[where] = where_mask(where, self.table, self.ntotal)
        return self._filters[where]

    def query_rows(self, where: str | None) -> np.ndarray | None:
        """(N,) bool rows a query with filter ``where`` may return (those of cases not
        removed that pass it), or None for every row."""
        allowed = self.allowed_rows()
        if where is None:
            return allowed
        passing = self.where_rows(where)
        return passing if allowed is None else passing & allowed

    def passing_rows(self, where: str | None) -> int:
        """How many rows a query with filter ``where`` may return."""
        rows = self.query_rows(where)
        return self.ntotal if rows is None else int(np.count_nonzero(rows))

    def row_of(self, case: str, slice_index: int) -> int:
        """The row of slice `slice_index` of `case`; IndexDirError naming what exists otherwise
        (and for a removed case)."""
        if case not in self._volume_of_case:
            raise IndexDirError(
                f"{self.index_dir}: no case {case!r} in this index ({len(self._volume_of_case)} "
                f"cases, e.g. {', '.join(self.cases[:3])})."
            )
        if case in self.removed_cases():
            raise IndexDirError(
                f"{self.index_dir}: case {case!r} was removed from this index (`fdn-index "
                f"remove`); it cannot be a query and no query returns it."
            )
        volume = self._volume_of_case[case]
        n = int(self.table.counts[volume])
        if not 0 <= int(slice_index) < n:
            raise IndexDirError(
                f"{self.index_dir}: case {case!r} has slices 0..{n - 1}; slice {slice_index} is out of range."
            )
        return int(self.table.starts[volume]) + int(slice_index)

    def model(self) -> FDN:
        """The index's own FDN (loaded once, on first use), its files checked against the
        manifest first: the weights' sha256 is the model checksum the codes were made with."""
        if self._model is None:
            import torch

            from fdn.errors import ModelError
            from fdn.training.checkpoint import load_model

            # fp32 codes are the CPU's; bf16 ones come only from a GPU (`encode`)
            bf16 = self.manifest.encoding_precision == "bf16" and torch.cuda.is_available()
            with swap_lock(self.index_dir, shared=True):
                for name in MODEL_FILES:
                    read_listed(self.index_dir, self.manifest, name, verify=self.verify)
                try:
                    self._model, _ = load_model(
                        self.index_dir / MODEL_DIR, device="cuda" if bf16 else "cpu"
                    )
                except ModelError as exc:
                    raise IndexDirError(f"{exc} ({fix_for(self.index_dir)}.)") from None
        return self._model

    def query_slice(
        self,
        case: str,
        slice_index: int,
        *,
        mode: str = "sum",
        include_same_volume: bool = False,
        **options: Any,
    ) -> list[Hit]:
        """Volume-wise top-Q for a slice that is already in the index.

        options: the other fields of `QueryOptions` (distance, topq, engine, normalized_sum,
        nprobe).
        """
        checked = QueryOptions(modes=(mode,), include_same_volume=include_same_volume, **options)
        row = self.row_of(case, slice_index)
        exclude = None if include_same_volume else self._volume_of_case[case]
        return self.search(*self.codes_of_row(row), mode, checked, exclude)

    def encode(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Codes of one preprocessed image (4, S, S) float32 with the index's model: two (h, w) uint16."""
        from fdn.archive_index.encode import encode_images

        size = self.manifest.input_size
        if image.shape != (4, size, size):
            raise ValueError(
                f"query image has shape {image.shape}; this index's model takes (4, {size}, {size})"
            )
        precision = self.manifest.encoding_precision
        model = self.model()
        if precision == "bf16" and next(model.parameters()).device.type != "cuda":
            raise IndexDirError(
                f"{self.index_dir}: its codes were encoded in bf16 on a GPU, and a query must be "
                "encoded the same way, but torch sees no CUDA GPU here. Query on a machine with "
                "one, or rebuild the index with --precision fp32 (whose codes a CPU reproduces)."
            )
        normal, abnormal = encode_images(model, image[None].astype(np.float32), precision=precision)
        return normal[0], abnormal[0]

    def _provenance(self, row: int) -> dict:
        """study_uid and series_uids of a row (columns absent in indexes built before them)."""
        study = self.table.value("study_uid", row) if "study_uid" in self.table else None
        series = self.table.value("series_uids", row) if "series_uids" in self.table else None
        return {
            "study_uid": str(study) if isinstance(study, str) and study else None,
            "series_uids": json.loads(series) if isinstance(series, str) and series else None,
        }

    def search_codes(
        self,
        normal: np.ndarray,
        abnormal: np.ndarray,
        *,
        mode: str = "sum",
        exclude_volume: int | None = None,
        **options: Any,
    ) -> list[Hit]:
        """`search` with the `QueryOptions` made from keywords (distance, topq, engine,
        normalized_sum, nprobe), for library users."""
        return self.search(
            normal, abnormal, mode, QueryOptions(modes=(mode,), **options), exclude_volume
        )

    def search(
        self,
        normal: np.ndarray,
        abnormal: np.ndarray,
        mode: str,
        options: QueryOptions,
        exclude_volume: int | None = None,
        positions: dict[str, np.ndarray] | None = None,
    ) -> list[Hit]:
        """Volume-wise top-Q for one pair of code grids (h, w) uint16 in ``mode``; options that
        name no distance or engine run with the mode's best distance and the index's default
        engine for it (`QueryOptions.for_mode`). positions: a region query's (h, w) bool grid
        positions per codebook (`fdn.archive_index.region`), or None for the whole grid; with
        ``options.explain`` each hit carries its per-position contributions."""
        options = options.for_mode(mode, self)
        assert options.distance is not None and options.engine is not None
        exclude = None if exclude_volume is None else np.array([exclude_volume], dtype=np.int64)
        # read at every query: a removal holds from the next query on, in a running server too
        allowed = self.query_rows(options.where)
        if mode in LESION_MODES:  # no slice almost without brain as a lesion look-alike
            if self.lesion_rows is not None:
                allowed = self.lesion_rows if allowed is None else allowed & self.lesion_rows
        result = self.hash_index.search_volumes(
            np.ascontiguousarray(normal[None], dtype=np.uint16),
            np.ascontiguousarray(abnormal[None], dtype=np.uint16),
            options.topq,
            mode=mode,
            distance=options.distance,
            engine=options.engine,
            exclude_volumes=exclude,
            normalized_sum=options.normalized_sum,
            nprobe=options.nprobe,
            allowed_rows=allowed,
            positions=positions,
        )
        hits = []
        for rank, (dist, row) in enumerate(zip(result.distances[0], result.rows[0]), start=1):
            if row < 0:
                break
            area = self.table.value("lesion_area", row)  # cells: no column of strings made
            hits.append(
                Hit(
                    rank=rank,
                    row=int(row),
                    case=str(self.table.value("case", row)),
                    slice=int(self.table.value("slice", row)),
                    distance=float(dist),
                    source=str(self.table.value("source", row)),
                    lesion_area=None
                    if area is None or (isinstance(area, float) and np.isnan(area))
                    else int(area),
                    **self._provenance(row),
                    explanation=self.explain_row(normal, abnormal, row, mode, options, positions)
                    if options.explain
                    else None,
                )
            )
        return hits

    def explain_row(self, normal, abnormal, row: int, mode: str, options, positions=None) -> dict:
        """Why row ``row`` is at its distance from the query grids (h, w) in ``mode`` under
        ``options``: the per-position contributions of `hashindex.explain`, as JSON."""
        from hashindex.explain import explain

        hit = self.hash_index.reconstruct(int(row))
        distance, summed = options.distance_for(mode), options.normalized_sum
        explained = explain(
            self.hash_index, (normal, abnormal), hit, mode=mode, distance=distance,
            normalized_sum=summed, positions=positions,
        )  # fmt: skip
        return explained.to_dict()


def open_index(index_dir: str | Path, *, verify: bool = True) -> ArchiveIndex:
    """Load a finished index directory; IndexDirError says what is wrong and how to fix it.

    Every file the manifest lists is checked before it is used: the slice table,
    slice_arrays.npz (read in its place where it was derived from it) and hashindex.json for
    size and (``verify``) sha256 now; the hash index's own files by `HashIndex.read` (its row
    arrays memory-mapped and checked by size and sum64); the FAISS
    files, the model weights and codes.zarr on first use (a query needs none of them). The
    files are read (or, for those used later, opened) under the directory's shared swap lock,
    so a build finishing meanwhile changes nothing this index sees.
    """
    index_dir = Path(index_dir)
    with swap_lock(index_dir, shared=True):
        manifest = read_manifest(index_dir)
        parquet = read_listed(index_dir, manifest, SLICES, verify=verify)
        # slice_arrays.npz, where the build wrote one from this slices.parquet, holds the columns
        # a query reads: no pyarrow to import, no Parquet to parse. The volumes come from the
        # hash index, so the table is made once it is read.
        arrays = None
        if SLICE_ARRAYS in manifest.files:
            arrays = load_slice_arrays(
                read_listed(index_dir, manifest, SLICE_ARRAYS, verify=verify),
                index_dir / SLICE_ARRAYS,
            )
            if slice_arrays_source(arrays) != manifest.files[SLICES]["sha256"]:
                arrays = None  # derived from another slices.parquet: read that one itself
        table = None
        if arrays is None:
            table = read_slice_table(
                parquet,
                index_dir / SLICES,
                n_rows=manifest.n_slices,
                n_cases=manifest.n_cases,
                model_checksum=manifest.model_checksum,
            )
        # hashindex.json, checked here, lists the checksums HashIndex.read checks its files by.
        meta = read_listed(index_dir, manifest, index_files().meta, verify=verify)
        _check_hashindex_listing(index_dir, manifest, meta)
        try:
            hash_index = HashIndex.read(index_dir, verify=verify)
        except HashIndexError as exc:
            raise IndexDirError(f"{exc} ({fix_for(index_dir)}.)") from None
        lesion_rows = read_lesion_rows(index_dir, manifest, manifest.n_slices, verify)
    mismatch = IndexDirError(
        f"{index_dir / index_files().meta}: the hash index holds {hash_index.ntotal} rows of grid "
        f"{hash_index.grid}, but the manifest and {SLICES} describe {manifest.n_slices} rows "
        f"of grid {manifest.grid} in other volumes. {fix_for(index_dir)}."
    )
    if hash_index.grid != manifest.grid or hash_index.ntotal != manifest.n_slices:
        raise mismatch
    if arrays is not None:
        table = read_slice_arrays(
            arrays,
            index_dir / SLICE_ARRAYS,
            volume=np.asarray(hash_index.volume_ids),
            n_cases=manifest.n_cases,
            model_checksum=manifest.model_checksum,
        )
    assert table is not None
    if arrays is None and not np.array_equal(hash_index.volume_ids, table["volume"]):
        raise mismatch
    return ArchiveIndex(
        index_dir, manifest, table, hash_index, verify=verify, lesion_rows=lesion_rows
    )


def _check_hashindex_listing(index_dir: Path, manifest: Manifest, meta: bytes) -> None:
    """The manifest and hashindex.json must record the same checksums for the hash index files."""
    try:
        listed = json.loads(meta)["files"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return  # HashIndex.read reports a malformed hashindex.json in detail

    def checksum(entry):  # hashindex.json also records sum64 of its row arrays
        return None if not isinstance(entry, dict) else (entry.get("size"), entry.get("sha256"))

    files = index_files()
    for name in files.names:
        if name != files.meta and checksum(manifest.files.get(name)) != checksum(
            listed.get(name) if isinstance(listed, dict) else None
        ):
            raise IndexDirError(
                f"{index_dir / files.meta}: its checksum of {name} differs from the "
                f"manifest's. {fix_for(index_dir)}."
            )


def _read_codes(index_dir: Path, manifest: Manifest, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    """The code arrays of codes.zarr, from the listed files only, each checked.

    The store is read into memory and decoded from there, so a file the manifest does not list
    is never read, and a chunk missing from the manifest and the disk is an error (zarr alone
    would read it as zeros). zarr is imported here: no query needs codes.zarr.
    """
    import zarr
    from zarr.core.buffer import default_buffer_prototype

    prefix = CODES + "/"
    buffer = default_buffer_prototype().buffer
    store = {
        name[len(prefix) :]: buffer.from_bytes(
            read_listed(index_dir, manifest, name, verify=verify)
        )
        for name in sorted(manifest.files)
        if name.startswith(prefix)
    }
    expected = (manifest.n_slices, *manifest.grid)
    arrays = []
    for name in ("normal", "abnormal"):
        path = index_dir / CODES / name
        try:
            group = zarr.open_group(zarr.storage.MemoryStore(store, read_only=True), mode="r")
            stored: Any = group[name]  # a zarr Array (the group holds only arrays)
            n_chunks = sum(1 for key in store if key.startswith(f"{name}/c"))
            if n_chunks != stored.nchunks:
                raise IndexDirError(
                    f"{path}: {n_chunks} of its {stored.nchunks} chunks are present; a missing "
                    f"chunk would read as code 0. {fix_for(index_dir)}."
                )
            codes = np.asarray(stored[:])
        except IndexDirError:
            raise
        except Exception as exc:  # zarr raises many types for a damaged store
            raise IndexDirError(
                f"{path}: unreadable code array ({type(exc).__name__}: {str(exc)[:80]}). "
                f"{fix_for(index_dir)}."
            ) from None
        if codes.shape != expected or codes.dtype != np.uint16:
            raise IndexDirError(
                f"{path}: expected uint16 {expected} as the manifest says, found {codes.dtype} "
                f"{codes.shape}. {fix_for(index_dir)}."
            )
        arrays.append(codes)
    return arrays[0], arrays[1]
