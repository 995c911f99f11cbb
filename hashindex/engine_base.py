"""The interface every search engine implements: the query it receives (`Query`) and the
`Engine` base class (what an engine supports, the hooks that check its index, `search` and
`search_volumes`). The engines themselves are in `hashindex.engines` and
`hashindex.faiss_engines`; the registry that names them, and applies what they support, is
`hashindex.registry`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hashindex.distances import DISTANCES, MODES
from hashindex.volumes import VolumeHits

if TYPE_CHECKING:
    from hashindex.state import IndexState


@dataclass(frozen=True)
class Query:
    """B queries and how to compare them: what every engine's search receives, checked.

    normal, abnormal: (B, h, w) uint16 code grids; mode, distance, normalized_sum: as
    `HashIndex.search` takes them; nprobe: lists probed (engines with ``takes_nprobe``);
    allowed_rows: (ntotal,) bool, True for the rows any query of the batch may return (engines
    with ``supports_row_mask``), or None for every row. An engine answers as if the other rows
    were not stored: the exact top-k / top-Q among the allowed rows, never a filtered top-k.
    positions: per codebook the (C,) int64 increasing flat grid positions the image distance
    sums over (a region query; engines with ``supports_position_mask``), or None for all; the
    distance is then that of the grids restricted to those positions (`hashindex.distances`).
    """

    normal: np.ndarray
    abnormal: np.ndarray
    mode: str
    distance: str
    normalized_sum: bool
    nprobe: int | None = None
    allowed_rows: np.ndarray | None = None
    positions: dict[str, np.ndarray] | None = None

    @property
    def B(self) -> int:
        return int(self.normal.shape[0])


class Engine(ABC):
    """One search engine over one index's stored rows (an instance per index, made on first use).

    Class attributes say what it supports; `hashindex.registry.check_engine` refuses what it
    does not, naming the fix; `search` and `search_volumes` answer queries that passed it.
    """

    name: ClassVar[str]
    exact: ClassVar[bool] = True  # the same answers as the numpy brute force
    modes: ClassVar[tuple[str, ...]] = MODES
    distances: ClassVar[tuple[str, ...]] = DISTANCES
    normalized_sum: ClassVar[bool] = True
    # why normalized_sum is refused, where it is (part of the message)
    no_normalized_sum: ClassVar[str] = ""
    takes_nprobe: ClassVar[bool] = False
    # whether it answers a query restricted to some grid positions (`Query.positions`, the
    # region query) exactly
    supports_position_mask: ClassVar[bool] = False
    # whether it answers a query restricted to some rows (`Query.allowed_rows`) exactly
    supports_row_mask: ClassVar[bool] = True
    # the distances this engine answers a query that names no engine, where the index can run
    # it; of several such engines the one of highest default_rank (`registry.default_engine`)
    default_for: ClassVar[tuple[str, ...]] = ()
    default_rank: ClassVar[int] = 0

    def __init__(self, index: IndexState):
        self.index = index

    @classmethod
    def available(cls, index: IndexState) -> bool:
        """Whether ``index`` holds what this engine searches (its codebooks fit, its files
        were built); `check` refuses the engine otherwise. Loads nothing."""
        return True

    @classmethod
    def is_default_for(cls, distance: str, index: IndexState) -> bool:
        """Whether a query of ``distance`` that names no engine may run on this one here (the
        highest `default_rank` of those that may wins). Loads nothing."""
        return distance in cls.default_for and cls.available(index)

    def check_index(self, mode: str) -> None:  # noqa: B027 (a hook: most engines need nothing)
        """ValueError unless the index holds what a search in ``mode`` needs."""

    def check_nprobe(self, nprobe: Any) -> None:  # noqa: B027 (a hook for engines with nprobe)
        """ValueError unless ``nprobe`` suits this engine (called where ``takes_nprobe``)."""

    @abstractmethod
    def search(self, query: Query, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Row-wise top-k: D (B, k) float64, I (B, k) int64 rows (-1 / inf padded);
        1 <= k <= max(ntotal, 1)."""

    @abstractmethod
    def search_volumes(self, query: Query, topq: int, exclude: np.ndarray | None) -> VolumeHits:
        """Volume-wise top-Q: (B, Q) hits; 1 <= topq <= number of volumes; exclude: (B,) int64
        volume ids or None."""

    def _prepare(self, query: Query) -> tuple[dict, dict]:
        """Per codebook the queries' (B, P) representative ids and (B,) squared norms."""
        return self.index._prepare(query.normal, query.abnormal)
