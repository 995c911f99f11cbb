"""Search of a `HashIndex`: query checks, the engine lookup, row-wise top-k and volume-wise top-Q.

The engines are `hashindex.engines`; the semantics every engine shares are in the
`hashindex.index` docstring.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hashindex.distances import BOOKS, DISTANCES, MODES
from hashindex.engine_base import Engine, Query
from hashindex.engines import RowCopyEngine
from hashindex.fastscan import FastScan
from hashindex.index_meta import is_int
from hashindex.registry import available_engines, check_engine, default_engine, engine_class
from hashindex.state import IndexState
from hashindex.volumes import VolumeHits


def _check_codes(codes, name: str, K: int, shape=None) -> None:
    if not isinstance(codes, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(codes).__name__}")
    if codes.dtype != np.uint16:
        raise TypeError(f"{name} must be uint16 code indices, got {codes.dtype}")
    if codes.ndim != 3 or codes.shape[1] < 1 or codes.shape[2] < 1:
        raise ValueError(f"{name} must have shape (N, h, w) with h, w >= 1, got {codes.shape}")
    if shape is not None and codes.shape[1:] != shape:
        raise ValueError(f"{name} grids are {codes.shape[1:]}, the index holds {shape}")
    if codes.size and int(codes.max()) >= K:
        raise ValueError(f"{name} holds code {int(codes.max())} but the codebook has K={K}")


class IndexSearch(IndexState):
    """`HashIndex.search` and `HashIndex.search_volumes` over the rows `HashIndex.add` stored."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # the engines this index has searched with, by name; fastscan and torch hold copies of
        # the rows made by their first query
        self._engines: dict[str, Engine] = {}

    def _engine(self, name) -> Engine:
        """The engine called ``name``, looked up in the registry on first use, then kept."""
        engine = self._engines.get(name) if isinstance(name, str) else None
        if engine is None:
            engine = self._engines[name] = engine_class(name)(self)
        return engine

    def available_engines(self) -> tuple[str, ...]:
        """The names of the engines this index can search with: those whose codebooks fit
        (fastscan: at most 256 distinct vectors per codebook) and whose files it holds (the
        FAISS engines). Loads nothing."""
        return available_engines(self)

    def default_engine(self, distance: str, position_mask: bool = False) -> str:
        """The engine a query of ``distance`` runs on when it names none
        (`hashindex.registry.default_engine`; ``position_mask``: a region query). Loads
        nothing."""
        return default_engine(distance, self, position_mask)

    def _rows_copy(self, name: str):
        """The copy of the rows the engine ``name`` searches (made on first use)."""
        engine = self._engine(name)
        assert isinstance(engine, RowCopyEngine)
        return engine.copy()

    def _fastscan(self) -> FastScan:
        """The fastscan engine's copy of the rows (the layout `write` stores)."""
        return self._rows_copy("fastscan")

    def _torchscan(self):
        """The torch engine's copy of the rows on its device (benchmarks/scale.py reads it)."""
        return self._rows_copy("torch")

    def _check_query(
        self,
        q_normal,
        q_abnormal,
        mode,
        distance,
        engine,
        normalized_sum,
        nprobe=None,
        allowed_rows=None,
        positions=None,
    ) -> tuple[Engine, Query | None]:
        """The engine that answers this query and the checked `Query` it receives (the
        region's positions as engines take them, `_positions`; the row mask, `_row_mask`), or
        None for the query when the mask allows no row; ValueError / TypeError for what it
        cannot answer."""
        if self.grid is None:
            raise ValueError("the index is empty: add rows before searching")
        cols = self._positions(positions)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        found = self._engine(engine)
        _check_codes(q_normal, "q_normal", self.tables["normal"].K, self.grid)
        _check_codes(q_abnormal, "q_abnormal", self.tables["abnormal"].K, self.grid)
        if q_normal.shape[0] != q_abnormal.shape[0]:
            raise ValueError("q_normal and q_abnormal must hold the same number of queries")
        if allowed_rows is not None:
            if not isinstance(allowed_rows, np.ndarray) or allowed_rows.dtype != np.bool_:
                raise TypeError(
                    "allowed_rows must be a bool numpy array (True: a row may be found)"
                )
            if allowed_rows.shape != (self.ntotal,):
                raise ValueError(
                    f"allowed_rows must have shape ({self.ntotal},) (one per stored row), got "
                    f"{allowed_rows.shape}"
                )
        check_engine(
            found,
            mode,
            distance,
            normalized_sum,
            nprobe,
            row_mask=allowed_rows is not None,
            position_mask=cols is not None,
        )
        mask, nothing = self._row_mask(allowed_rows)
        if nothing:
            return found, None
        return found, Query(
            q_normal, q_abnormal, mode, distance, normalized_sum, nprobe, mask, cols
        )

    @staticmethod
    def _count(name: str, value, most: int) -> int:
        """``value`` (k or topq) checked to be an integer >= 1, capped at ``most``: the count is
        the caller's, the memory of the (B, count) answer ours."""
        if not is_int(value):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
        return int(min(value, most))

    def _positions(self, positions) -> dict[str, np.ndarray] | None:
        """A region's positions as engines take them (`Query.positions`): per codebook the
        increasing flat indices of the True cells, or None when the region is the whole grid.

        positions: None, one (h, w) bool mask for both grids, or {"normal": mask, "abnormal":
        mask}; every mask has the index's grid shape and at least one True cell."""
        if positions is None:
            return None
        masks = positions if isinstance(positions, dict) else dict.fromkeys(BOOKS, positions)
        if set(masks) != set(BOOKS):
            raise ValueError(f"positions must name both codebooks {BOOKS}, got {sorted(masks)}")
        cols = {}
        for book in BOOKS:
            mask = masks[book]
            if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
                raise TypeError(f"positions ({book}) must be a bool numpy array of the grid")
            if mask.shape != self.grid:
                raise ValueError(
                    f"positions ({book}) must have the grid's shape {self.grid}, got {mask.shape}"
                )
            if not mask.any():
                raise ValueError(f"positions ({book}) selects no grid position")
            cols[book] = np.flatnonzero(mask).astype(np.int64)
        if all(mask.all() for mask in masks.values()):
            return None  # the whole grid: the unrestricted path, the same sums
        return cols

    @staticmethod
    def _row_mask(allowed_rows: np.ndarray | None) -> tuple[np.ndarray | None, bool]:
        """(the mask engines get, whether no row is allowed): a mask that allows every row is
        no mask, so an engine runs its unfiltered path."""
        if allowed_rows is None or allowed_rows.all():
            return None, False
        return np.ascontiguousarray(allowed_rows), not allowed_rows.any()

    def _prepare(self, q_normal, q_abnormal):
        q_reps, q_sq = {}, {}
        for book, q in (("normal", q_normal), ("abnormal", q_abnormal)):
            t = self.tables[book]
            q_reps[book] = t.to_reps(q)
            q_sq[book] = t.row_sqnorms(q_reps[book])
        return q_reps, q_sq

    def search(
        self,
        q_normal: np.ndarray,
        q_abnormal: np.ndarray,
        k: int,
        *,
        mode: str = "sum",
        distance: str = "hamming",
        engine: str = "lut",
        normalized_sum: bool = False,
        nprobe: int | None = None,
        allowed_rows: np.ndarray | None = None,
        positions: np.ndarray | dict[str, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row-wise top-k: D (B, k) float64, I (B, k) int64 row ids (-1 / inf padded).

        allowed_rows: (ntotal,) bool, the only rows that may be returned (a filter, removed
        cases left out), or None: the exact top-k among those rows, padded where fewer.
        positions: a region query, the (h, w) bool grid positions the distance compares (one
        mask for both grids, or one per codebook in a dict), or None for every position; the
        distances are those of the grids restricted to them (engines with
        ``supports_position_mask``: lut, numpy)."""
        found, query = self._check_query(
            q_normal,
            q_abnormal,
            mode,
            distance,
            engine,
            normalized_sum,
            nprobe,
            allowed_rows,
            positions,
        )
        k = self._count("k", k, max(self.ntotal, 1))  # never more columns than rows
        if query is None:
            B = q_normal.shape[0]
            return np.full((B, k), np.inf), np.full((B, k), -1, np.int64)
        return found.search(query, k)

    def search_volumes(
        self,
        q_normal: np.ndarray,
        q_abnormal: np.ndarray,
        topq: int,
        *,
        mode: str = "sum",
        distance: str = "hamming",
        engine: str = "lut",
        exclude_volumes: np.ndarray | None = None,
        normalized_sum: bool = False,
        nprobe: int | None = None,
        allowed_rows: np.ndarray | None = None,
        positions: np.ndarray | dict[str, np.ndarray] | None = None,
    ) -> VolumeHits:
        """Volume-wise top-Q (section 4.4.6): each hit is a different volume's closest row.

        The result has min(topq, number of volumes) columns, -1 / inf padded where fewer
        volumes qualify (the query's own volume excluded, rows left out by ``allowed_rows``,
        or an approximate engine). allowed_rows: (ntotal,) bool or None, as in `search`; a
        volume's closest row is its closest allowed row. positions: a region, as in `search`.
        """
        found, query = self._check_query(
            q_normal,
            q_abnormal,
            mode,
            distance,
            engine,
            normalized_sum,
            nprobe,
            allowed_rows,
            positions,
        )
        topq = self._count("topq", topq, self._vol_unique.size)  # never more than the volumes
        B = q_normal.shape[0]
        if exclude_volumes is not None:
            if not isinstance(exclude_volumes, np.ndarray) or exclude_volumes.dtype != np.int64:
                raise TypeError("exclude_volumes must be an int64 numpy array")
            if exclude_volumes.shape != (B,):
                raise ValueError(
                    f"exclude_volumes must have shape ({B},), got {exclude_volumes.shape}"
                )
        if query is None:
            return VolumeHits.padded(B, topq)
        return found.search_volumes(query, topq, exclude_volumes)
