"""What a query needs of an index: the `SearchableIndex` protocol and its `Hit`.

`ArchiveIndex` (one index directory, `fdn.archive_index.retrieval`) and `ShardedIndex` (its
shards searched together, `fdn.archive_index.shards`) both implement it, so `fdn.archive_index
.queries` and the service run on either without asking which one they hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from fdn.archive_index.manifest import Manifest
    from fdn.archive_index.query_options import QueryOptions


@dataclass(frozen=True)
class Hit:
    """One retrieved slice: its rank (1-based), where it lies, and its distance to the query."""

    rank: int
    row: int
    case: str
    slice: int
    distance: float
    source: str
    lesion_area: int | None
    # DICOM provenance of an imported case (None otherwise), so a viewer can open the study.
    study_uid: str | None = None
    series_uids: dict[str, str] | None = None
    # with QueryOptions.explain: `hashindex.explain.Explanation.to_dict()` of this hit
    explanation: dict | None = None


class SliceColumns(Protocol):
    """An index's slice table: column name -> (N,) array, and one cell without the column."""

    def __getitem__(self, name: str) -> np.ndarray: ...

    def __contains__(self, name: object) -> bool: ...

    def value(self, name: str, row: int) -> Any: ...


class SearchableIndex(Protocol):
    """An index a query runs on. Rows and volume ids are those of the whole index."""

    index_dir: Path
    manifest: Manifest

    @property
    def ntotal(self) -> int: ...

    @property
    def cases(self) -> list[str]:
        """The case ids in volume order: case i is volume i."""
        ...

    @property
    def table(self) -> SliceColumns: ...

    def default_engine(self, distance: str, position_mask: bool = False) -> str:
        """The engine a query of ``distance`` runs on when its options name none (one that
        takes a position mask for a region query)."""
        ...

    def volume_of(self, case: str) -> int | None: ...

    def passing_rows(self, where: str | None) -> int:
        """How many rows a query with the filter ``where`` may return (removed cases left out);
        WhereError for a filter this index cannot apply."""
        ...

    def removed_cases(self) -> frozenset[str]:
        """The cases `fdn-index remove` removed (and compaction has not yet deleted): no query
        returns them, and none may be a query."""
        ...

    def default_slice(self, case: str) -> int: ...

    def slice_range(self, case: str) -> range: ...

    def row_of(self, case: str, slice_index: int) -> int: ...

    def codes_of_row(self, row: int) -> tuple[np.ndarray, np.ndarray]: ...

    def encode(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def explain_row(
        self,
        normal: np.ndarray,
        abnormal: np.ndarray,
        row: int,
        mode: str,
        options: QueryOptions,
        positions: dict[str, np.ndarray] | None = None,
    ) -> dict:
        """The per-position contributions to the distance of row ``row`` from the query grids
        (`hashindex.explain.Explanation.to_dict`)."""
        ...

    def search(
        self,
        normal: np.ndarray,
        abnormal: np.ndarray,
        mode: str,
        options: QueryOptions,
        exclude_volume: int | None = None,
        positions: dict[str, np.ndarray] | None = None,
    ) -> list[Hit]:
        """Volume-wise top-``options.topq`` for one pair of code grids (h, w) uint16 in
        ``mode`` (one of ``options.modes``), ``exclude_volume`` left out; positions: a region
        query's (h, w) bool positions per codebook, or None for the whole grid."""
        ...
