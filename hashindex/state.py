"""The state of a `HashIndex`, shared by its construction, search and storage modules.

`hashindex.index` builds an index and adds rows, `hashindex.search` answers queries and
`hashindex.storage` writes and reads it; each is a class over this one set of attributes.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from hashindex.distances import BOOKS, CodebookTables

if TYPE_CHECKING:
    from hashindex.faiss_binary import FaissHamming
    from hashindex.fastscan import FastScan


class IndexState:
    """Codebook tables and stored rows: what the engines search.

    tables: per codebook its `CodebookTables`; grid: (h, w) of the stored grids, None while
    empty; codes: per codebook (N, P) representative ids; row_sqnorm: per codebook (N,) ‖r‖²;
    volume_ids: (N,) int64; scales: the normalized-sum scales; flat / ivf: FAISS indexes per
    mode. An index from `read` holds read-only memory maps of its files in codes, row_sqnorm
    and the volume arrays; `add` replaces them by arrays in memory.
    """

    codes: dict[str, Any]
    row_sqnorm: dict[str, Any]
    _vol_unique: np.ndarray
    _vol_index: np.ndarray

    def __init__(self, tables: dict, report: dict, *, ivf_nlist=None, seed=0, faiss_indexes=True):
        self.tables: dict[str, CodebookTables] = tables
        self._report = report
        self.ivf_nlist = ivf_nlist
        self.seed = seed
        self.faiss_indexes = faiss_indexes
        self.grid: tuple[int, int] | None = None
        self.codes = {b: None for b in BOOKS}  # (N, P) representative ids
        self.row_sqnorm = {b: None for b in BOOKS}  # (N,) float64
        self.volume_ids = np.zeros(0, np.int64)
        self.scales: dict[str, float] = {}
        # the fastscan layout of the stored rows as `read` mapped it (None: made on first use)
        self._codes_t: np.ndarray | None = None
        self.flat: dict[str, FaissHamming] = {}
        self.ivf: dict[str, FaissHamming] = {}
        # FAISS files opened by `read` and loaded on first use: name -> (open file, entry, verify)
        self._pending: dict[str, tuple] = {}
        self._pending_lock = threading.Lock()

    @property
    def ntotal(self) -> int:
        return int(self.volume_ids.size)

    @property
    def report(self) -> dict:
        return self._report

    def _append(self, codes_normal, codes_abnormal, volume_ids, *, estimate_scales=True) -> None:
        """Store rows (defined by `hashindex.index.HashIndex`)."""
        raise NotImplementedError

    def available_engines(self) -> tuple[str, ...]:
        """The engines this index can search with (defined by `hashindex.search`)."""
        raise NotImplementedError

    def _fastscan(self) -> FastScan:
        """The fastscan engine over the stored rows (defined by `hashindex.search`)."""
        raise NotImplementedError

    def _prepare(self, q_normal, q_abnormal) -> tuple[dict, dict]:
        """Per codebook the queries' representative ids and squared norms (defined by
        `hashindex.search`)."""
        raise NotImplementedError

    def _packed_modes(self, codes_n: np.ndarray, codes_a: np.ndarray) -> dict:
        """Per mode the packed bits of code grids (defined by `hashindex.index.HashIndex`)."""
        raise NotImplementedError

    def _load_faiss(self, names=None) -> None:
        """Load FAISS files `read` left pending (defined by `hashindex.storage`)."""
        raise NotImplementedError
