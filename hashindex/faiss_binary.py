"""`FaissHamming`: a FAISS binary index (flat or IVF) over packed image codes.

faiss is imported on first use, so a process that never searches with a FAISS engine never
loads it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

GPU_K_LIMIT = 2048


def gpu_available() -> bool:
    """True when this faiss build sees at least one GPU."""
    import faiss

    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


class FaissHamming:
    """A FAISS binary index over packed image codes of ``nbytes`` bytes (d = 8·nbytes bits)."""

    def __init__(self, nbytes: int, nlist: int | None = None, index=None):
        import faiss

        self.nbytes = nbytes
        self.nlist = nlist
        if index is not None:
            self.cpu = index
        elif nlist is None:
            self.cpu = faiss.IndexBinaryFlat(8 * nbytes)
        else:
            self.quantizer = faiss.IndexBinaryFlat(8 * nbytes)
            self.cpu = faiss.IndexBinaryIVF(self.quantizer, 8 * nbytes, nlist)
            self.cpu.own_fields = False
        self._gpu = None
        self._gpu_res = None

    @property
    def is_ivf(self) -> bool:
        import faiss

        return isinstance(self.cpu, faiss.IndexBinaryIVF)

    @property
    def ntotal(self) -> int:
        return int(self.cpu.ntotal)

    def train(self, x: np.ndarray) -> None:
        self.cpu.train(x)

    def add(self, x: np.ndarray) -> None:
        """Append packed codes x (n, nbytes) uint8."""
        self.cpu.add(np.ascontiguousarray(x))

    def _gpu_index(self):
        import faiss

        if self.is_ivf or not gpu_available():
            return None
        if self._gpu is None or self._gpu.ntotal != self.cpu.ntotal:
            self._gpu_res = faiss.StandardGpuResources()
            self._gpu = faiss.GpuIndexBinaryFlat(self._gpu_res, self.cpu)
        return self._gpu

    def search(
        self, x: np.ndarray, k: int, nprobe: int | None = None, allowed: np.ndarray | None = None
    ):
        """(D (n, k) int32, I (n, k) int64) for packed queries x (n, nbytes) uint8; allowed:
        (ntotal,) bool, the only rows that may be returned (flat only), or None."""
        import faiss

        if self.is_ivf:
            if allowed is not None:
                raise ValueError("a row mask needs a flat index (faiss's binary IVF has none)")
            self.cpu.nprobe = int(nprobe) if nprobe is not None else min(8, int(self.nlist or 8))
        params = None
        if allowed is not None:
            # bit i of byte i // 8 (little bit order) is row i: faiss's IDSelectorBitmap; the
            # bitmap must outlive the search, as must the selector: both stay referenced here
            bitmap = np.packbits(np.asarray(allowed, bool), bitorder="little")
            selector = faiss.IDSelectorBitmap(allowed.size, faiss.swig_ptr(bitmap))
            params = faiss.SearchParameters()
            params.sel = selector
        gpu = self._gpu_index() if params is None else None  # the GPU copy takes no selector
        index = gpu if (gpu is not None and k <= GPU_K_LIMIT) else self.cpu
        # hamming_batch_size rows of the database are scanned per block; with long codes the
        # default 65,536 blows the cache for codes of kilobytes, so keep a block near 8 MB.
        cvar: Any = faiss.cvar  # SWIG globals: untyped
        old = cvar.hamming_batch_size
        cvar.hamming_batch_size = int(max(256, min(65536, (8 << 20) // self.nbytes)))
        try:
            if params is None:
                return index.search(np.ascontiguousarray(x), k)
            return index.search(np.ascontiguousarray(x), k, params=params)
        finally:
            cvar.hamming_batch_size = old
