"""The FAISS engines: exact (`faiss-flat`) and approximate (`faiss-ivf`) Hamming search over
the packed bits, with FAISS binary indexes per mode (`hashindex.faiss_binary`)."""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hashindex.engine_base import Engine, Query
from hashindex.faiss_binary import FaissHamming
from hashindex.files import FLAT_FILES, IVF_FILES
from hashindex.index_meta import is_int
from hashindex.volumes import VolumeHits, rows_from_knn, volumes_from_knn

if TYPE_CHECKING:
    from hashindex.state import IndexState


class FaissEngine(Engine):
    """Hamming distances of the packed bits with a FAISS binary index per mode (S_sum: of the
    concatenated bits); k is grown until the volume-wise answer is certain."""

    distances = ("hamming",)
    normalized_sum = False
    no_normalized_sum = "FAISS adds the plain Hamming distances of the concatenated bits"
    files: ClassVar[dict[str, str]]  # per mode, the index file (`hashindex.files`)

    @classmethod
    @abstractmethod
    def indexes(cls, index: IndexState) -> dict[str, FaissHamming]:
        """The index's FAISS indexes this engine searches, per mode (those loaded)."""

    @classmethod
    def available(cls, index: IndexState) -> bool:
        return bool(cls.indexes(index)) or any(n in index._pending for n in cls.files.values())

    def check_index(self, mode: str) -> None:
        if not self.index.faiss_indexes:
            raise ValueError(
                "this index has no FAISS files (built with faiss_indexes=False, or by "
                "`fdn-index build --faiss-indexes never`, or `auto` above its size limit); use "
                "engine='lut' or 'fastscan', or rebuild with --faiss-indexes always"
            )
        self.index._load_faiss([self.files[mode]])

    def _knn(self, query: Query):
        index = self.indexes(self.index)[query.mode]
        x = self.index._packed_modes(query.normal, query.abnormal)[query.mode]

        def knn(ids, k):
            D, I = index.search(x[ids], k, nprobe=query.nprobe, allowed=query.allowed_rows)
            return D.astype(np.float64), I.astype(np.int64)

        return knn

    def search(self, query: Query, k: int) -> tuple[np.ndarray, np.ndarray]:
        return rows_from_knn(self._knn(query), query.B, self.index.ntotal, k)

    def search_volumes(self, query: Query, topq: int, exclude: np.ndarray | None) -> VolumeHits:
        return volumes_from_knn(
            self._knn(query), query.B, self.index.ntotal, topq, self.index.volume_ids, exclude
        )


class FaissFlatEngine(FaissEngine):
    """Exact Hamming on packed bits with ``faiss.IndexBinaryFlat`` (on the GPU with
    ``GpuIndexBinaryFlat`` when faiss sees one; k > 2048 then falls back to the CPU copy). A row
    mask becomes faiss's ``IDSelectorBitmap`` on the CPU copy: the exact k-NN of the allowed
    rows."""

    name = "faiss-flat"
    files = FLAT_FILES

    @classmethod
    def indexes(cls, index: IndexState) -> dict[str, FaissHamming]:
        return index.flat


class FaissIvfEngine(FaissEngine):
    """Approximate Hamming with ``faiss.IndexBinaryIVF`` (nlist lists, nprobe probed); no row
    mask (faiss has no ID selector for binary IVF, and a filtered approximate top-k could
    leave out every allowed row)."""

    name = "faiss-ivf"
    exact = False
    takes_nprobe = True
    supports_row_mask = False
    files = IVF_FILES

    @classmethod
    def indexes(cls, index: IndexState) -> dict[str, FaissHamming]:
        return index.ivf

    def check_index(self, mode: str) -> None:
        super().check_index(mode)
        if not self.index.ivf:
            raise ValueError("no IVF index: build with ivf_nlist=... or call train_ivf()")

    def check_nprobe(self, nprobe: Any) -> None:
        nlist = self.index.ivf_nlist
        if not is_int(nprobe) or not 1 <= nprobe <= (nlist or 0):
            raise ValueError(f"nprobe must be an integer from 1 to nlist={nlist}, got {nprobe!r}")
