"""The ``torch`` engine: the exact look-up-table scan on a GPU (CUDA), or on the CPU without one.

Why torch and not FAISS's GPU indexes: torch is already a dependency of the project, while the
faiss-gpu wheel (135 MB plus the CUDA 12 runtime) cannot be installed everywhere; FAISS stays an
option through ``faiss-flat``. `hashindex` imports torch only when this engine is first used.

The code grids live on the device as uint8 or int16 representative ids, (N, P) per codebook.
A query adds, position after position, one column of table entries gathered by those ids: the
same additions in the same order as the `lut` scan, so the sums (int64 for D_H, float64 for
D_E and D_A) are bit-identical to lut's, and the distances returned for the hits are computed
from them by `hashindex.distances.finish` itself. The selection runs on the device, whose sqrt
and arccos may differ from numpy's in the last bit (torch's CPU kernels use SLEEF), so for D_E
and D_A two rows within one rounding of each other may come back in the other order; D_H is
exact integers and identical to lut in every respect.
Rows are processed in chunks, so the temporary int64 indices never exceed CHUNK_ROWS × 8 bytes.
The volume-wise top-Q (closest row per volume, smaller row on ties; volumes by distance, then
row) is computed on the device too, and only the Q hits come back.
"""

from __future__ import annotations

import numpy as np

from hashindex.distances import image_distance

CHUNK_ROWS = 1 << 22


def _torch():
    import torch

    return torch


def default_device() -> str:
    """ "cuda" when torch sees a GPU, else "cpu"."""
    return "cuda" if _torch().cuda.is_available() else "cpu"


class TorchScan:
    """An index's code grids on a torch device, and exact volume-wise search over them.

    codes: per codebook (N, P) uint8/uint16 representative ids; row_sqnorm: per codebook (N,)
    float64; volume_index: (N,) int64 dense volume numbers into volume_ids (V,).
    """

    def __init__(
        self,
        tables: dict,
        codes: dict,
        row_sqnorm: dict,
        volume_index: np.ndarray,
        volume_ids: np.ndarray,
        scales: dict,
        device: str | None = None,
    ):
        torch = _torch()
        self.device = torch.device(device or default_device())
        self.tables, self.scales = tables, scales
        self.volume_ids = volume_ids
        self.n = int(volume_index.size)
        self.n_volumes = int(volume_ids.size)

        def put(a: np.ndarray):
            # int16 holds any representative id (< 65,536 would need uint16, which torch lacks
            # on CUDA; ids < 32,768 always suffice for K ≤ 65,536 as stored by hashindex)
            if a.dtype == np.uint16:
                a = a.astype(np.int16)
            # a copy of a read-only memory map (`HashIndex.read`): torch wants writable arrays
            return torch.from_numpy(np.require(a, requirements=["C", "W"])).to(self.device)

        self.codes = {b: put(c) for b, c in codes.items()}
        self.row_sqnorm_host = row_sqnorm
        self.row_sqnorm = {b: put(s) for b, s in row_sqnorm.items()}
        self.volume_index = put(volume_index)

    def _sums(self, book: str, table: np.ndarray):
        """(N,) Σ_p table[p, code_p] in position order on the device (int64 or float64)."""
        torch = _torch()
        t = torch.from_numpy(table.astype(np.int64 if table.dtype == np.int32 else np.float64)).to(
            self.device
        )
        codes = self.codes[book]
        out = torch.empty(self.n, dtype=t.dtype, device=self.device)
        for s in range(0, self.n, CHUNK_ROWS):
            chunk = codes[s : s + CHUNK_ROWS].long()
            acc = t[0][chunk[:, 0]].clone()
            for p in range(1, t.shape[0]):
                acc += t[p][chunk[:, p]]
            out[s : s + chunk.shape[0]] = acc
        return out

    def distances(
        self,
        q_reps: dict,
        q_sq: dict,
        mode: str,
        distance: str,
        normalized_sum: bool,
        sums: dict | None = None,
    ):
        """(N,) float64 distances of one query on the device, as `finish` defines them.

        sums, when given, receives each codebook's (N,) table sums (on the device)."""
        torch = _torch()
        books = ("normal", "abnormal") if mode == "sum" else (mode,)
        total = None
        for book in books:
            acc = self._sums(book, self.tables[book].query_table(q_reps[book], distance))
            if sums is not None:
                sums[book] = acc
            if distance == "hamming":
                d = acc.to(torch.float64)
            elif distance == "euclidean":
                d = torch.sqrt(torch.clamp(acc, min=0.0))
            else:  # the same operations as `finish`, on the device
                q = float(q_sq[book])
                r = self.row_sqnorm[book]
                denom = torch.sqrt(q * r)
                cos = torch.where(
                    denom > 0, acc / torch.where(denom > 0, denom, 1.0), torch.zeros_like(acc)
                ).clamp(-1.0, 1.0)
                d = torch.arccos(cos) / np.pi
                if q == 0:
                    d = torch.where(r == 0, torch.zeros_like(d), d)
            if normalized_sum and mode == "sum":
                # tensor ÷ tensor: torch may turn a division by a Python scalar into a
                # multiplication by its reciprocal, one rounding off numpy's division
                d = d / torch.full_like(d, self.scales[f"{book}/{distance}"])
            total = d if total is None else total + d
        return total

    def search(
        self,
        q_reps: dict,
        q_sq: dict,
        topq: int,
        mode: str,
        distance: str,
        normalized_sum: bool,
        exclude: np.ndarray | None,
    ):
        """Volume-wise top-Q of B queries: (B, Q) distances, rows, volume ids (inf/-1 padded)."""
        torch = _torch()
        B = next(iter(q_reps.values())).shape[0]
        D = np.full((B, topq), np.inf)
        R = np.full((B, topq), -1, np.int64)
        V = np.full((B, topq), -1, np.int64)
        rows = torch.arange(self.n, device=self.device)
        for i in range(B):
            sums: dict = {}
            d = self.distances(
                {b: q_reps[b][i] for b in q_reps},
                {b: q_sq[b][i] for b in q_sq},
                mode,
                distance,
                normalized_sum,
                sums,
            )
            # closest distance per volume, then the smallest row reaching it
            best = torch.full((self.n_volumes,), np.inf, dtype=torch.float64, device=self.device)
            best.scatter_reduce_(0, self.volume_index, d, reduce="amin")
            at_best = d == best[self.volume_index]
            first = torch.full((self.n_volumes,), self.n, dtype=torch.int64, device=self.device)
            first.scatter_reduce_(0, self.volume_index[at_best], rows[at_best], reduce="amin")
            if exclude is not None:
                best[torch.from_numpy(self.volume_ids == exclude[i]).to(self.device)] = np.inf
            ok = torch.isfinite(best)
            vols = torch.nonzero(ok).flatten()
            order = torch.argsort(first[vols], stable=True)  # rows ascending, then distances
            vols = vols[order]
            vols = vols[torch.argsort(best[vols], stable=True)][:topq]
            m = int(vols.numel())
            hit_rows = first[vols]
            R[i, :m] = hit_rows.cpu().numpy()
            V[i, :m] = self.volume_ids[vols.cpu().numpy()]
            D[i, :m] = self._host_distances(
                sums, hit_rows, R[i, :m], q_sq, i, distance, normalized_sum and mode == "sum"
            )
        return D, R, V

    def _host_distances(self, sums, rows_dev, rows, q_sq, i, distance, normalized):
        """The hits' distances computed by `finish` from their sums, as the lut engine does."""
        return image_distance(
            distance,
            {book: acc[rows_dev].cpu().numpy() for book, acc in sums.items()},
            {book: q_sq[book][i] for book in sums},
            {book: self.row_sqnorm_host[book][rows] for book in sums},
            {book: self.scales[f"{book}/{distance}"] for book in sums} if normalized else None,
        )
