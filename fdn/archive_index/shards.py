"""An index split by rows into shards, and exact queries that fan out to them and merge.

    split_index("index/", "shards/", n_shards=4)       # shards/shard-000 … shard-003, shards.json
    index = open_sharded("shards/")                    # every shard opened here, searched in threads
    index = open_sharded("shards/", client=client)     # each shard opened on a Dask worker

A shard is a complete index directory (`fdn.archive_index.retrieval.open_index` opens it) holding whole
volumes: a contiguous run of the source index's cases, assembled from its build journal with
the same model and code tables. Shard k's row r is row ``row_offset[k] + r`` of the source.
A query runs on every shard in parallel; each shard returns its own volume-wise top-Q, and the
merge keeps the Q best of their union by (distance, global row). A volume lives in one shard,
so its closest row is its shard's answer, and the result equals the unsharded index's, ties
included.

`shards.json` records each shard's model, position and a digest of its rows, and each shard
its own position (`shard.json`); every shard opened, here or on a worker, is checked against
them (`fdn.archive_index.shard_listing`), so a shard of another model, a shard copied over
another or an edited offset is refused before any query.

`ShardedIndex` is a `SearchableIndex` (`fdn.archive_index.searchable`), like one index, so
`fdn-index query`, the service and the library run sharded queries through the one query path.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from crashsafe import atomic_write_json
from fdn.archive_index.query_options import QueryOptions
from fdn.archive_index.retrieval import ArchiveIndex, open_index
from fdn.archive_index.searchable import Hit
from fdn.archive_index.shard_listing import (
    FORMAT,
    FORMAT_VERSION,
    SHARD_FILE,
    SHARDS_FILE,
    check_shard,
    identity,
    own_record,
    read_listing,
    rows_digest,
)
from fdn.errors import IndexDirError

log = logging.getLogger(__name__)

# Indexes opened by the Dask tasks of a worker process: {shard path: ArchiveIndex}
_OPEN: dict[str, ArchiveIndex] = {}


def is_sharded(folder: str | Path) -> bool:
    return (Path(folder) / SHARDS_FILE).is_file()


def split_index(index_dir: str | Path, out_dir: str | Path, n_shards: int, on_shard=None) -> dict:
    """Write `n_shards` shard indexes of the built index `index_dir` into `out_dir`.

    Cases are split in row order into contiguous runs of about equal slice counts. Needs the
    index's build journal (encoded/) and model copy. Returns the contents of shards.json.
    """
    from fdn.archive_index.assemble import assemble_index
    from fdn.archive_index.build_plan import read_plan
    from fdn.archive_index.layout import ENCODED_DIR, MODEL_DIR, PLAN
    from fdn.archive_index.manifest import read_manifest
    from fdn.training.checkpoint import load_model, model_checksum

    index_dir, out_dir = Path(index_dir), Path(out_dir)
    source = open_index(index_dir)
    if not isinstance(n_shards, int) or not 1 <= n_shards <= len(source.cases):
        raise IndexDirError(
            f"{index_dir}: --shards must be from 1 to the number of cases "
            f"({len(source.cases)}), got {n_shards!r}"
        )
    if not (index_dir / ENCODED_DIR).is_dir():
        raise IndexDirError(
            f"{index_dir}: no build journal ({ENCODED_DIR}/), which the shards "
            "are assembled from. Split an index built on this machine."
        )
    if out_dir.exists() and any(out_dir.iterdir()):
        raise IndexDirError(f"{out_dir}: exists and is not empty. Choose a new folder.")
    plan = read_plan(index_dir / PLAN)
    model_dir = index_dir / MODEL_DIR
    model, config = load_model(model_dir)
    checksum = model_checksum(model_dir)
    # in row order; removed cases (`fdn-index remove`) are not carried into the shards
    removed = source.removed_cases()
    cases = [c for c in source.cases if c not in removed]
    sizes = np.array([np.count_nonzero(source.table["case"] == c) for c in cases])
    # cut where the cumulative slice count crosses k/n of the total: contiguous, whole volumes
    cuts = np.searchsorted(np.cumsum(sizes), np.arange(1, n_shards) * sizes.sum() / n_shards)
    groups = [g.tolist() for g in np.split(np.array(cases, dtype=object), cuts)]
    groups = [g for g in groups if g]
    out_dir.mkdir(parents=True, exist_ok=True)
    shards, offset = [], 0
    for k, group in enumerate(groups):
        name = f"shard-{k:03d}"
        (out_dir / name).mkdir()
        _, n_slices = assemble_index(
            index_dir,
            out_dir / name,
            group,
            model,
            config,
            checksum,
            model_dir,
            preset=source.manifest.preset,
            skipped_cases=[],
            archive_roots=plan["archive_roots"] or source.manifest.archive_roots,
            bit_budget=source.manifest.hashindex.get("bit_budget"),
            precision=source.manifest.encoding_precision,
            ivf_nlist=source.manifest.hashindex.get("ivf_nlist"),
            # every shard as the source: a sharded search needs the same engines in each
            faiss_indexes="always" if source.hash_index.faiss_indexes else "never",
        )
        shards.append(
            {
                "path": name,
                "row_offset": offset,
                "n_slices": n_slices,
                "cases": group,
                "model_checksum": checksum,
                "rows_digest": rows_digest(read_manifest(out_dir / name).files),
            }
        )
        offset += n_slices
        if on_shard is not None:
            on_shard(name)
    listing = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": str(index_dir.resolve()),
        "n_slices": offset,
        "model_checksum": checksum,
        "shards": shards,
    }
    for k, entry in enumerate(shards):  # each shard's own record of its position
        atomic_write_json(out_dir / entry["path"] / SHARD_FILE, own_record(listing, k))
    atomic_write_json(out_dir / SHARDS_FILE, listing)  # written last: the set is complete
    return listing


def _shard(path: str) -> ArchiveIndex:
    if path not in _OPEN:
        _OPEN[path] = open_index(path)
    return _OPEN[path]


def _open_shard(path: str) -> dict:
    """Open a shard where this runs (a worker keeps it, opened afresh) and say what it is."""
    _OPEN[path] = open_index(path)
    return identity(_OPEN[path], path)


def _open_here(path: str) -> tuple[ArchiveIndex, dict]:
    index = open_index(path)
    return index, identity(index, path)


def _search(
    index: ArchiveIndex,
    normal,
    abnormal,
    mode: str,
    options: QueryOptions,
    exclude_case,
    positions=None,
) -> list[Hit]:
    """One shard's volume-wise top-Q (its hits' explanations made there, where the rows are)."""
    exclude = None if exclude_case is None else index.volume_of(exclude_case)
    return index.search(normal, abnormal, mode, options, exclude, positions)


def _search_shard(
    path: str,
    normal,
    abnormal,
    mode: str,
    options: QueryOptions,
    exclude_case: str | None,
    positions=None,
) -> list[Hit]:
    """One shard's volume-wise top-Q on the worker that holds the shard."""
    return _search(_shard(path), normal, abnormal, mode, options, exclude_case, positions)


def _removed_on_worker(path: str) -> list[str]:
    return sorted(_shard(path).removed_cases())


def _passing_on_worker(path: str, where: str | None) -> int:
    return _shard(path).passing_rows(where)


class _GlobalCodes:
    """codes[row] of a sharded index: fetched from the shard that holds the row."""

    def __init__(self, owner, which: str):
        self.owner, self.which = owner, which

    def __getitem__(self, row: int) -> np.ndarray:
        return self.owner.codes_of_row(int(row))[0 if self.which == "normal" else 1]


class MergedSliceTable(dict):
    """The slice table of every shard: column name -> (N,) array in the unsharded row order."""

    def value(self, name: str, row: int):
        """One cell as a Python value (None for a null), as `SliceTable.value` gives it."""
        value = self[name][int(row)]
        if value is None or (isinstance(value, float) and value != value):
            return None
        return value.item() if isinstance(value, np.generic) else value


class ShardedIndex:
    """Shards of one index, searched together; see the module docstring.

    A `SearchableIndex`, as an `ArchiveIndex` is: volume ids and rows are those of the
    unsharded index.
    """

    def __init__(self, folder: Path, listing: dict, client=None):
        self.index_dir = folder
        self.listing = listing
        self.client = client
        self.paths = [str((folder / s["path"]).resolve()) for s in listing["shards"]]
        self.offsets = np.array([s["row_offset"] for s in listing["shards"]], np.int64)
        # open here (threads) or on the workers (None here), each checked against the listing
        self.shards: list[ArchiveIndex] | None
        if client is None:
            with ThreadPoolExecutor(len(self.paths)) as pool:
                opened = list(pool.map(_open_here, self.paths))
            self.shards = [index for index, _ in opened]
            found = [what for _, what in opened]
            self._pool = ThreadPoolExecutor(len(self.paths), thread_name_prefix="shard")
        else:
            workers = sorted(client.scheduler_info()["workers"])
            self.workers = [workers[k % len(workers)] for k in range(len(self.paths))]
            # open every shard on its worker now, so the first query pays nothing
            found = client.gather(
                [
                    client.submit(_open_shard, p, workers=[w], pure=False)
                    for p, w in zip(self.paths, self.workers, strict=True)
                ]
            )
            self.shards = None
        for k, what in enumerate(found):
            check_shard(folder, listing, k, what)
        self._cases = [c for s in listing["shards"] for c in s["cases"]]
        self._shard_of_case = {c: k for k, s in enumerate(listing["shards"]) for c in s["cases"]}
        self._volume = {c: v for v, c in enumerate(self._cases)}
        self.codes_normal = _GlobalCodes(self, "normal")
        self.codes_abnormal = _GlobalCodes(self, "abnormal")
        first = (
            self.shards[0] if self.shards is not None else open_index(self.paths[0], verify=False)
        )
        self.manifest = replace(
            first.manifest, n_slices=int(listing["n_slices"]), n_cases=len(self._cases)
        )
        self._first = first
        self._table: MergedSliceTable | None = None

    @property
    def cases(self) -> list[str]:
        return list(self._cases)

    @property
    def ntotal(self) -> int:
        return int(self.listing["n_slices"])

    def volume_of(self, case: str) -> int | None:
        return self._volume.get(case)

    def _local(self, k: int) -> ArchiveIndex:
        return self.shards[k] if self.shards is not None else _shard(self.paths[k])

    @property
    def table(self) -> MergedSliceTable:
        """The slice table of every shard, rows in the unsharded order (read on first use)."""
        if self._table is None:
            parts = [self._local(k).table for k in range(len(self.paths))]
            self._table = MergedSliceTable(
                {
                    c: np.concatenate(
                        [
                            np.asarray(p[c], dtype=object)
                            if c in ("case", "source", "study_uid", "series_uids")
                            else np.asarray(p[c])
                            for p in parts
                        ]
                    )
                    for c in ("case", "slice", "source", "lesion_area")
                }
            )
            rows = np.concatenate(
                [np.asarray(p["row"]) + off for p, off in zip(parts, self.offsets, strict=True)]
            )
            self._table["row"] = rows
        return self._table

    def _owner(self, case: str) -> int:
        if case not in self._shard_of_case:
            raise IndexDirError(
                f"{self.index_dir}: no case {case!r} in these shards "
                f"({len(self._cases)} cases, e.g. {', '.join(self._cases[:3])})."
            )
        return self._shard_of_case[case]

    def removed_cases(self) -> frozenset[str]:
        """The cases removed from their shards (`fdn-index remove` on this folder)."""
        if self.shards is None:  # on the workers: each shard honours its own at every query
            names = self.client.gather(
                [
                    self.client.submit(_removed_on_worker, p, workers=[w], pure=False)
                    for p, w in zip(self.paths, self.workers, strict=True)
                ]
            )
            return frozenset(c for shard in names for c in shard)
        return frozenset().union(*(s.removed_cases() for s in self.shards))

    def passing_rows(self, where: str | None) -> int:
        """How many rows of all shards a query with filter ``where`` may return (each shard
        applies the filter to its own slice table, and the removals to its own rows)."""
        if self.shards is not None:
            return sum(s.passing_rows(where) for s in self.shards)
        return sum(
            self.client.gather(
                [
                    self.client.submit(_passing_on_worker, p, where, workers=[w], pure=False)
                    for p, w in zip(self.paths, self.workers, strict=True)
                ]
            )
        )

    def default_slice(self, case: str) -> int:
        return self._local(self._owner(case)).default_slice(case)

    def slice_range(self, case: str) -> range:
        return self._local(self._owner(case)).slice_range(case)

    def row_of(self, case: str, slice_index: int) -> int:
        k = self._owner(case)
        return int(self.offsets[k]) + self._local(k).row_of(case, slice_index)

    def codes_of_row(self, row: int):
        """The code grids (normal, abnormal) of a global row, from the shard that holds it."""
        k = int(np.searchsorted(self.offsets, row, side="right") - 1)
        return self._local(k).codes_of_row(row - int(self.offsets[k]))

    def default_engine(self, distance: str, position_mask: bool = False) -> str:
        """The shards' default engine (they share one model, hence one pair of codebooks)."""
        return self._first.default_engine(distance, position_mask)

    def explain_row(self, normal, abnormal, row: int, mode: str, options, positions=None) -> dict:
        """The explanation of a global row, made by the shard that holds it."""
        k = int(np.searchsorted(self.offsets, row, side="right") - 1)
        local = row - int(self.offsets[k])
        return self._local(k).explain_row(normal, abnormal, local, mode, options, positions)

    def encode(self, image: np.ndarray):
        """Codes of an external image with the model every shard shares."""
        return self._first.encode(image)

    def search(
        self,
        normal: np.ndarray,
        abnormal: np.ndarray,
        mode: str,
        options: QueryOptions,
        exclude_volume: int | None = None,
        positions: dict[str, np.ndarray] | None = None,
    ) -> list[Hit]:
        """Volume-wise top-Q over every shard, merged exactly (see the module docstring);
        positions: a region query's grid positions, the same in every shard."""
        exclude_case = None if exclude_volume is None else self._cases[exclude_volume]
        # decided here, once, so that every shard (they share the codebooks) runs the same engine
        options = options.for_mode(mode, self)
        args = (normal, abnormal, mode, options, exclude_case, positions)
        if self.shards is not None:
            jobs = [self._pool.submit(_search, index, *args) for index in self.shards]
            per_shard = [j.result() for j in jobs]
        else:
            per_shard = self.client.gather(
                [
                    self.client.submit(
                        _search_shard,
                        p,
                        *args,
                        workers=[w],
                        pure=False,
                    )
                    for p, w in zip(self.paths, self.workers, strict=True)
                ]
            )
        hits = [
            replace(h, row=h.row + int(self.offsets[k]))
            for k, shard_hits in enumerate(per_shard)
            for h in shard_hits
        ]
        hits.sort(key=lambda h: (h.distance, h.row))
        return [replace(h, rank=i + 1) for i, h in enumerate(hits[: options.topq])]


def open_sharded(folder: str | Path, client=None) -> ShardedIndex:
    """Open the shards listed in `folder`/shards.json (on the client's workers, if given), each
    checked against the listing (`fdn.archive_index.shard_listing`)."""
    folder = Path(folder)
    return ShardedIndex(folder, read_listing(folder), client)
