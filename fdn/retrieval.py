"""Open an index directory and answer queries: the library side of `fdn-index query`.

    index = open_index("index/")
    hits = index.query_slice("SYN_003", 30, mode="abnormal", topq=10)
    for hit in hits:
        print(hit.rank, hit.case, hit.slice, hit.distance)

A query is a slice already in the index (`query_slice`) or any 4-channel image encoded on the fly
with the index's own model (`query_image`). Hits are volume-wise (4.4.6): each from a different
volume, at its closest slice, the query's own volume excluded unless asked for.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import zarr

from fdn.errors import IndexDirError
from fdn.indexdir import CODES, MODEL_DIR, SLICES, Manifest, read_manifest
from hashindex import DISTANCES, ENGINES, MODES, HashIndex
from hashindex.errors import HashIndexError

log = logging.getLogger(__name__)


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


class ArchiveIndex:
    """A finished index directory, loaded for search. Use `open_index` to make one."""

    def __init__(
        self,
        index_dir: Path,
        manifest: Manifest,
        codes_normal: np.ndarray,
        codes_abnormal: np.ndarray,
        table: dict[str, np.ndarray],
        hash_index: HashIndex,
    ):
        self.index_dir = Path(index_dir)
        self.manifest = manifest
        self.codes_normal = codes_normal  # (N, h, w) uint16
        self.codes_abnormal = codes_abnormal  # (N, h, w) uint16
        self.table = table  # column name -> (N,) array; row i describes codes[i]
        self.hash_index = hash_index
        self._rows = {(c, int(s)): i for i, (c, s) in enumerate(zip(table["case"], table["slice"]))}
        self._volume_of_case = {c: int(v) for c, v in zip(table["case"], table["volume"])}
        self._model = None

    @property
    def ntotal(self) -> int:
        return int(self.codes_normal.shape[0])

    @property
    def cases(self) -> list[str]:
        return list(self._volume_of_case)

    def volume_of(self, case: str) -> int | None:
        """The volume id of `case`, or None when the case is not in this index."""
        return self._volume_of_case.get(case)

    def default_slice(self, case: str) -> int:
        """The slice of `case` with the largest lesion, else its middle slice."""
        rows = np.flatnonzero(self.table["case"] == case)
        if len(rows) == 0:
            self.row_of(case, 0)  # raises the unknown-case error
        areas = np.array(
            [a if a is not None and a == a else 0 for a in self.table["lesion_area"][rows]]
        )
        if areas.max() > 0:
            return int(self.table["slice"][rows[int(np.argmax(areas))]])
        return int(self.table["slice"][rows[len(rows) // 2]])

    def row_of(self, case: str, slice_index: int) -> int:
        """The row of slice `slice_index` of `case`; IndexDirError naming what exists otherwise."""
        if case not in self._volume_of_case:
            raise IndexDirError(
                f"{self.index_dir}: no case {case!r} in this index ({len(self._volume_of_case)} "
                f"cases, e.g. {', '.join(self.cases[:3])})."
            )
        row = self._rows.get((case, int(slice_index)))
        if row is None:
            n = int(np.sum(self.table["case"] == case))
            raise IndexDirError(
                f"{self.index_dir}: case {case!r} has slices 0..{n - 1}; slice {slice_index} is out of range."
            )
        return row

    def model(self):
        """The index's own FDN (loaded once, on first use)."""
        if self._model is None:
            from fdn.checkpoint import load_model

            self._model, _ = load_model(self.index_dir / MODEL_DIR)
        return self._model

    def query_slice(
        self, case: str, slice_index: int, *, include_same_volume: bool = False, **options
    ) -> list[Hit]:
        """Volume-wise top-Q for a slice that is already in the index.

        options: those of `search_codes` (mode, distance, topq, engine, normalized_sum, nprobe).
        """
        row = self.row_of(case, slice_index)
        exclude = None if include_same_volume else self._volume_of_case[case]
        return self.search_codes(
            self.codes_normal[row], self.codes_abnormal[row], exclude_volume=exclude, **options
        )

    def encode(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Codes of one preprocessed image (4, S, S) float32 with the index's model: two (h, w) uint16."""
        from fdn.encode import encode_images

        size = self.manifest.input_size
        if image.shape != (4, size, size):
            raise ValueError(
                f"query image has shape {image.shape}; this index's model takes (4, {size}, {size})"
            )
        normal, abnormal = encode_images(self.model(), image[None].astype(np.float32))
        return normal[0], abnormal[0]

    def query_image(
        self, image: np.ndarray, *, exclude_case: str | None = None, **options
    ) -> list[Hit]:
        """Volume-wise top-Q for an external preprocessed image (4, S, S), encoded on the fly.

        options: those of `search_codes`.
        """
        normal, abnormal = self.encode(image)
        exclude = self._volume_of_case.get(exclude_case) if exclude_case else None
        return self.search_codes(normal, abnormal, exclude_volume=exclude, **options)

    def _provenance(self, row: int) -> dict:
        """study_uid and series_uids of a row (columns absent in indexes built before them)."""
        study = self.table["study_uid"][row] if "study_uid" in self.table else None
        series = self.table["series_uids"][row] if "series_uids" in self.table else None
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
        distance: str = "hamming",
        topq: int = 10,
        engine: str = "lut",
        exclude_volume: int | None = None,
        normalized_sum: bool = False,
        nprobe: int | None = None,
    ) -> list[Hit]:
        """Volume-wise top-Q for one pair of code grids (h, w) uint16."""
        for name, value, allowed in (
            ("mode", mode, MODES),
            ("distance", distance, DISTANCES),
            ("engine", engine, ENGINES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if topq < 1:
            raise ValueError(f"topq must be at least 1; got {topq}")
        exclude = None if exclude_volume is None else np.array([exclude_volume], dtype=np.int64)
        result = self.hash_index.search_volumes(
            np.ascontiguousarray(normal[None], dtype=np.uint16),
            np.ascontiguousarray(abnormal[None], dtype=np.uint16),
            topq,
            mode=mode,
            distance=distance,
            engine=engine,
            exclude_volumes=exclude,
            normalized_sum=normalized_sum,
            nprobe=nprobe,
        )
        hits = []
        for rank, (dist, row) in enumerate(zip(result.distances[0], result.rows[0]), start=1):
            if row < 0:
                break
            area = self.table["lesion_area"][row]
            hits.append(
                Hit(
                    rank=rank,
                    row=int(row),
                    case=str(self.table["case"][row]),
                    slice=int(self.table["slice"][row]),
                    distance=float(dist),
                    source=str(self.table["source"][row]),
                    lesion_area=None
                    if area is None or (isinstance(area, float) and np.isnan(area))
                    else int(area),
                    **self._provenance(row),
                )
            )
        return hits


def open_index(index_dir: str | Path) -> ArchiveIndex:
    """Load a finished index directory; IndexDirError says what is wrong and how to fix it."""
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    try:
        group = zarr.open_group(index_dir / CODES, mode="r")
        codes_normal = np.asarray(group["normal"][:])
        codes_abnormal = np.asarray(group["abnormal"][:])
    except Exception as exc:  # zarr raises many types for a damaged store
        raise IndexDirError(
            f"{index_dir / CODES}: unreadable code arrays ({type(exc).__name__}: {exc}). Rebuild the index."
        ) from exc
    try:
        arrow = pq.read_table(index_dir / SLICES)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
        raise IndexDirError(
            f"{index_dir / SLICES}: unreadable slice table ({type(exc).__name__}: {exc}). Rebuild the index."
        ) from exc
    table = {name: arrow.column(name).to_numpy(zero_copy_only=False) for name in arrow.column_names}
    expected = (manifest.n_slices, *manifest.grid)
    for name, codes in (("normal", codes_normal), ("abnormal", codes_abnormal)):
        if codes.shape != expected or codes.dtype != np.uint16:
            raise IndexDirError(
                f"{index_dir / CODES}/{name}: expected uint16 {expected} as the manifest says, "
                f"found {codes.dtype} {codes.shape}. Rebuild the index."
            )
    if arrow.num_rows != manifest.n_slices:
        raise IndexDirError(
            f"{index_dir / SLICES}: {arrow.num_rows} rows, the manifest says {manifest.n_slices} "
            f"slices. Rebuild the index."
        )
    if set(table["model_checksum"]) != {manifest.model_checksum}:
        raise IndexDirError(
            f"{index_dir / SLICES}: rows from another model than the manifest's. Rebuild."
        )
    try:
        hash_index = HashIndex.read(
            index_dir, codes_normal, codes_abnormal, table["volume"].astype(np.int64)
        )
    except HashIndexError as exc:
        raise IndexDirError(f"{index_dir}: {exc}") from exc
    return ArchiveIndex(index_dir, manifest, codes_normal, codes_abnormal, table, hash_index)
