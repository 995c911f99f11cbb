"""Search of a `HashIndex`: query checks, the engines, row-wise top-k and volume-wise top-Q.

The semantics every engine shares are in the `hashindex.index` docstring.
"""

from __future__ import annotations

import numpy as np

from hashindex.distances import BOOKS, DISTANCES, MODES, image_distance
from hashindex.engines import ENGINES, SCANS
from hashindex.fastscan import FastScan
from hashindex.files import FLAT_FILES, IVF_FILES
from hashindex.index_meta import is_int
from hashindex.state import IndexState
from hashindex.volumes import (
    VolumeHits,
    rows_from_knn,
    topk_rows,
    topq_volumes,
    volumes_from_knn,
)


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

    def _check_query(
        self, q_normal, q_abnormal, mode, distance, engine, normalized_sum, nprobe=None
    ):
        if self.grid is None:
            raise ValueError("the index is empty: add rows before searching")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        _check_codes(q_normal, "q_normal", self.tables["normal"].K, self.grid)
        _check_codes(q_abnormal, "q_abnormal", self.tables["abnormal"].K, self.grid)
        if q_normal.shape[0] != q_abnormal.shape[0]:
            raise ValueError("q_normal and q_abnormal must hold the same number of queries")
        if engine.startswith("faiss"):
            if distance != "hamming":
                raise ValueError(
                    f"engine {engine!r} supports only distance='hamming'; use "
                    f"engine='lut' for {distance!r}"
                )
            if normalized_sum and mode == "sum":
                raise ValueError(
                    "normalized_sum needs engine='lut' or 'numpy' (FAISS adds "
                    "the plain Hamming distances of the concatenated bits)"
                )
            if not self.faiss_indexes:
                raise ValueError("this index was built with faiss_indexes=False")
            files = FLAT_FILES if engine == "faiss-flat" else IVF_FILES
            self._load_faiss([files[mode]] if mode in files else None)
            if engine == "faiss-ivf" and not self.ivf:
                raise ValueError("no IVF index: build with ivf_nlist=... or call train_ivf()")
        if engine == "fastscan":
            wide = [b for b in BOOKS if self.tables[b].n_reps > 256]
            if wide:
                raise ValueError(
                    f"engine 'fastscan' stores one byte per code and the {wide[0]} codebook has "
                    f"{self.tables[wide[0]].n_reps} distinct vectors (> 256); use engine='lut'"
                )
        if nprobe is not None:
            if engine != "faiss-ivf":
                raise ValueError(
                    f"nprobe (lists probed) applies only to engine='faiss-ivf'; "
                    f"engine {engine!r} scans every row, so leave nprobe out"
                )
            if not is_int(nprobe) or not 1 <= nprobe <= self.ivf_nlist:
                raise ValueError(
                    f"nprobe must be an integer from 1 to nlist={self.ivf_nlist}, got {nprobe!r}"
                )

    def _row_distances(self, b, q_reps, q_sq, mode, distance, engine, normalized_sum):
        """(N,) float64 distances of query b to every row (lut / numpy engines)."""
        books = BOOKS if mode == "sum" else (mode,)
        if engine == "lut" and distance == "hamming" and mode == "sum" and not normalized_sum:
            # fused single pass; integer sums, so identical to adding the two distances
            from hashindex.kernels import KERNELS  # numba: imported on first use

            out = np.empty(self.ntotal)
            tn, ta = self.tables["normal"], self.tables["abnormal"]
            KERNELS["lut_scan_int_pair"](
                self.codes["normal"],
                tn.query_table(q_reps["normal"][b], distance),
                self.codes["abnormal"],
                ta.query_table(q_reps["abnormal"][b], distance),
                out,
            )
            return out
        sums = {
            book: SCANS[engine](
                self.codes[book], self.tables[book].query_table(q_reps[book][b], distance)
            )
            for book in books
        }
        scales = None
        if normalized_sum and mode == "sum":
            scales = {book: self.scales[f"{book}/{distance}"] for book in books}
        return image_distance(
            distance,
            sums,
            {book: q_sq[book][b] for book in books},
            {book: self.row_sqnorm[book] for book in books},
            scales,
        )

    def _fastscan(self) -> FastScan:
        """The fastscan engine over the stored rows: on the layout `read` mapped from the index
        folder, else on block-transposed codes made on first use after an add."""
        if self._fast is None or self._fast.n != self.ntotal:
            self._fast = FastScan(
                self.tables,
                self.codes,
                self.row_sqnorm,
                self._vol_index,
                self._vol_unique,
                self.scales,
                codes_t=self._codes_t,
            )
        return self._fast

    def _torchscan(self):
        """The torch engine's copy of the code grids on its device, made on first use."""
        from hashindex.torch_engine import TorchScan

        if self._torch is None or self._torch.n != self.ntotal:
            self._torch = TorchScan(
                self.tables,
                self.codes,
                self.row_sqnorm,
                self._vol_index,
                self._vol_unique,
                self.scales,
            )
        return self._torch

    def _prepare(self, q_normal, q_abnormal):
        q_reps, q_sq = {}, {}
        for book, q in (("normal", q_normal), ("abnormal", q_abnormal)):
            t = self.tables[book]
            q_reps[book] = t.to_reps(q)
            q_sq[book] = t.row_sqnorms(q_reps[book])
        return q_reps, q_sq

    def _faiss_knn(self, engine, mode, q_normal, q_abnormal, nprobe):
        index = (self.flat if engine == "faiss-flat" else self.ivf)[mode]
        x = self._packed_modes(q_normal, q_abnormal)[mode]

        def knn(ids, k):
            D, I = index.search(x[ids], k, nprobe=nprobe)
            return D.astype(np.float64), I.astype(np.int64)

        return knn

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
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row-wise top-k: D (B, k) float64, I (B, k) int64 row ids (-1 / inf padded)."""
        self._check_query(q_normal, q_abnormal, mode, distance, engine, normalized_sum, nprobe)
        if not is_int(k):
            raise TypeError(f"k must be an integer, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        # Never more columns than rows: k is the caller's, the memory is ours.
        k = int(min(k, max(self.ntotal, 1)))
        B = q_normal.shape[0]
        if engine.startswith("faiss"):
            knn = self._faiss_knn(engine, mode, q_normal, q_abnormal, nprobe)
            return rows_from_knn(knn, B, self.ntotal, k)
        q_reps, q_sq = self._prepare(q_normal, q_abnormal)
        if engine == "fastscan":
            D, I, _, _ = self._fastscan().search(
                q_reps, q_sq, k, mode, distance, normalized_sum, None, by_volume=False
            )
            return D, I
        if engine == "torch":
            D = np.full((B, k), np.inf)
            I = np.full((B, k), -1, np.int64)
            scan = self._torchscan()
            for b in range(B):
                dist = scan.distances(
                    {m: q_reps[m][b] for m in BOOKS},
                    {m: q_sq[m][b] for m in BOOKS},
                    mode,
                    distance,
                    normalized_sum,
                )
                D[b], I[b] = topk_rows(dist.cpu().numpy(), k)
            return D, I
        D = np.full((B, k), np.inf)
        I = np.full((B, k), -1, np.int64)
        for b in range(B):
            dist = self._row_distances(b, q_reps, q_sq, mode, distance, engine, normalized_sum)
            D[b], I[b] = topk_rows(dist, k)
        return D, I

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
    ) -> VolumeHits:
        """Volume-wise top-Q (section 4.4.6): each hit is a different volume's closest row.

        The result has min(topq, number of volumes) columns, -1 / inf padded where fewer
        volumes qualify (the query's own volume excluded, or an approximate engine).
        """
        self._check_query(q_normal, q_abnormal, mode, distance, engine, normalized_sum, nprobe)
        if not is_int(topq):
            raise TypeError(f"topq must be an integer, got {type(topq).__name__}")
        if topq < 1:
            raise ValueError(f"topq must be >= 1, got {topq}")
        # Q can never exceed the number of volumes: cap it before allocating (B, Q) arrays.
        topq = int(min(topq, self._vol_unique.size))
        B = q_normal.shape[0]
        if exclude_volumes is not None:
            if not isinstance(exclude_volumes, np.ndarray) or exclude_volumes.dtype != np.int64:
                raise TypeError("exclude_volumes must be an int64 numpy array")
            if exclude_volumes.shape != (B,):
                raise ValueError(
                    f"exclude_volumes must have shape ({B},), got {exclude_volumes.shape}"
                )
        if engine.startswith("faiss"):
            knn = self._faiss_knn(engine, mode, q_normal, q_abnormal, nprobe)
            return volumes_from_knn(knn, B, self.ntotal, topq, self.volume_ids, exclude_volumes)
        q_reps, q_sq = self._prepare(q_normal, q_abnormal)
        if engine == "fastscan":
            D, R, V, _ = self._fastscan().search(
                q_reps, q_sq, topq, mode, distance, normalized_sum, exclude_volumes
            )
            return VolumeHits(D, R, V)
        if engine == "torch":
            return VolumeHits(
                *self._torchscan().search(
                    q_reps, q_sq, topq, mode, distance, normalized_sum, exclude_volumes
                )
            )
        D = np.full((B, topq), np.inf)
        R = np.full((B, topq), -1, np.int64)
        V = np.full((B, topq), -1, np.int64)
        for b in range(B):
            dist = self._row_distances(b, q_reps, q_sq, mode, distance, engine, normalized_sum)
            ex = None if exclude_volumes is None else int(exclude_volumes[b])
            D[b], R[b], V[b] = topq_volumes(dist, self._vol_index, self._vol_unique, topq, ex)
        return VolumeHits(D, R, V)
