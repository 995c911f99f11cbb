"""The synthetic search workload of the speed benchmark: codebooks, code grids, volumes, queries.

Uniform random code grids would flatter every engine: a trained FDN uses its codes very
unevenly. This module draws code grids with the structure a trained model's code usage has:

- Codebooks (K × D float32) in which a large share of the vectors has (almost) zero norm — the
  paper's "compactness" (Appendix E) — and the live vectors are clustered.
- Normal anatomy codes: per grid position and slice depth, a Zipf-like preference over the live
  codes (the code nearest a smooth position/depth-dependent "anatomy" anchor is used most); the
  positions outside the head use one background code; consecutive slices of a volume keep a
  position's code with probability `persistence` (neighbouring slices look alike).
- Abnormal anatomy codes: a "no lesion" code almost everywhere; a diseased volume has one lesion
  spanning a run of slices whose cross-section (a disc on the grid, largest mid-lesion) carries
  lesion codes, Zipf-distributed around the volume's own lesion type, core and rim differing.
- Volumes of 155 slices (BraTS); queries are the largest-lesion slice of diseased volumes drawn
  from the same process with another seed, so they are new patients, not rows of the archive.

`from_index` replaces the invented usage by a real index directory's: its codebooks and the
empirical code distribution of every grid position (read from ``codes.zarr``), sampled with the
same slice-to-slice persistence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashindex.binarize import ZERO_NORM

log = logging.getLogger(__name__)

SLICES_PER_VOLUME = 155


@dataclass
class Workload:
    """Code grids of an archive plus query slices, all over the same two codebooks.

    codebook_normal, codebook_abnormal: (K, D) float32.
    codes_normal, codes_abnormal: (N, h, w) uint16; volume_ids: (N,) int64, 155 rows per volume.
    query_normal, query_abnormal: (B, h, w) uint16; query_volumes: (B,) int64, ids of volumes
    that are not in the archive (new patients).
    """

    codebook_normal: np.ndarray
    codebook_abnormal: np.ndarray
    codes_normal: np.ndarray
    codes_abnormal: np.ndarray
    volume_ids: np.ndarray
    query_normal: np.ndarray
    query_abnormal: np.ndarray
    query_volumes: np.ndarray
    source: str

    @property
    def n(self) -> int:
        return int(self.codes_normal.shape[0])

    def head(self, n: int) -> Workload:
        """The first n rows of the archive (views, no copy), same codebooks and queries."""
        if not 0 < n <= self.n:
            raise ValueError(f"n must be in 1..{self.n}, got {n}")
        return Workload(
            self.codebook_normal,
            self.codebook_abnormal,
            self.codes_normal[:n],
            self.codes_abnormal[:n],
            self.volume_ids[:n],
            self.query_normal,
            self.query_abnormal,
            self.query_volumes,
            self.source,
        )

    def hash_index(self, seed: int):
        """A `hashindex.HashIndex` (no FAISS files) holding every row of the archive."""
        from hashindex import HashIndex

        index = HashIndex.build(
            self.codebook_normal, self.codebook_abnormal, faiss_indexes=False, seed=seed
        )
        index.add(self.codes_normal, self.codes_abnormal, self.volume_ids)
        return index


def decode(codebook: np.ndarray, codes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Quantized latent grids as flat float vectors: (n, h, w) codes → (n, h·w·D) float32.

    Row r is ``concat_p codebook[codes[r, p]]`` over the positions p in row-major order, i.e. the
    vector a user would index with a float Euclidean search. ``out`` may be a preallocated
    (n, h·w·D) float32 array (e.g. a column slice of a wider matrix).
    """
    n = codes.shape[0]
    flat = codes.reshape(n, -1)
    P, D = flat.shape[1], codebook.shape[1]
    if out is None:
        out = np.empty((n, P * D), np.float32)
    step = 16384  # bounds the (step, P, D) temporary
    for s in range(0, n, step):
        out[s : s + step] = codebook[flat[s : s + step]].reshape(-1, P * D)
    return out


# ---------------------------------------------------------------------------- codebooks


def synthetic_codebook(
    rng: np.random.Generator,
    K: int = 512,
    D: int = 64,
    dead_fraction: float = 0.65,
    n_clusters: int = 12,
) -> np.ndarray:
    """(K, D) float32 codebook: ``dead_fraction`` of the rows near zero, the rest clustered.

    Dead rows are half exact zeros, half tiny vectors (norm 1e-8..1e-6) that an EMA codebook
    leaves behind and that hashindex rounds to zero. Live rows are cluster centres of norm ≈ 1
    plus a within-cluster spread of ≈ 0.35, so neighbour sets are meaningful. Rows are shuffled.
    """
    if not 0.0 <= dead_fraction < 1.0:
        raise ValueError(f"dead_fraction must be in [0, 1), got {dead_fraction}")
    n_dead = int(round(dead_fraction * K))
    n_live = K - n_dead
    if n_live < 2:
        raise ValueError(f"K={K} with dead_fraction={dead_fraction} leaves fewer than 2 live codes")
    centres = rng.normal(size=(n_clusters, D)) / np.sqrt(D)
    member = rng.integers(0, n_clusters, n_live)
    live = centres[member] + 0.35 * rng.normal(size=(n_live, D)) / np.sqrt(D)
    dead = rng.normal(size=(n_dead, D))
    dead /= np.linalg.norm(dead, axis=1, keepdims=True)
    dead *= 10.0 ** rng.uniform(-8, -6, size=(n_dead, 1))
    dead[: n_dead // 2] = 0.0
    book = np.concatenate([live, dead]).astype(np.float32)
    return book[rng.permutation(K)]


def live_codes(codebook: np.ndarray) -> np.ndarray:
    """Indices of the rows with L2 norm ≥ 1e-5 (the codes a trained model actually uses)."""
    return np.flatnonzero(np.linalg.norm(codebook.astype(np.float64), axis=1) >= ZERO_NORM)


def _zipf_by_proximity(vectors: np.ndarray, anchors: np.ndarray, exponent: float) -> np.ndarray:
    """(A, C) probabilities ∝ 1 / (rank + 1)^exponent of each vector's distance to each anchor."""
    d = ((anchors[:, None, :] - vectors[None, :, :]) ** 2).sum(-1)
    rank = np.argsort(np.argsort(d, axis=1), axis=1)
    p = 1.0 / (rank + 1.0) ** exponent
    return p / p.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------- sampling


def _sample_rows(cdf: np.ndarray, row: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per element from the categorical distribution ``cdf[row]``.

    cdf: (R, C) cumulative probabilities (last column 1); row: any-shape int array into cdf.
    Vectorised inverse-CDF sampling: row r's CDF is shifted by r so all rows form one increasing
    sequence and a single searchsorted answers every draw.
    """
    R, C = cdf.shape
    flat = (cdf + np.arange(R)[:, None]).ravel()
    flat[C - 1 :: C] = np.arange(1, R + 1) - 1e-12  # exact row ends despite rounding
    u = rng.random(row.shape) * (1 - 1e-12) + row
    idx = np.searchsorted(flat, u, side="right") - row * C
    return np.minimum(idx, C - 1)


def _persist(fresh: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Slice-to-slice persistence: where ``keep`` (V, S, P) holds, repeat the previous slice.

    fresh: (V, S, P) independent draws. Slice 0 is always fresh. Returns the carried grid.
    """
    V, S, P = fresh.shape
    keep = keep.copy()
    keep[:, 0] = False
    src = np.where(keep, 0, np.arange(S)[None, :, None])
    src = np.maximum.accumulate(src, axis=1)  # index of the last fresh slice at or before s
    return np.take_along_axis(fresh, src, axis=1)


@dataclass
class _SyntheticUsage:
    """Per-depth-bin, per-position code distributions of the synthetic model."""

    normal_cdf: np.ndarray  # (Z * P, L) over the live normal codes
    normal_live: np.ndarray  # (L,) code ids
    background: int  # normal code outside the head
    lesion_cdf: np.ndarray  # (T * 2, La) over lesion codes; T lesion types × (core, rim)
    lesion_live: np.ndarray
    no_lesion: int  # abnormal code where there is no lesion
    grid: tuple[int, int]
    depth_bins: int


def _synthetic_usage(
    rng: np.random.Generator,
    book_n: np.ndarray,
    book_a: np.ndarray,
    grid: tuple[int, int],
    depth_bins: int = 16,
    lesion_types: int = 6,
    exponent: float = 1.2,
) -> _SyntheticUsage:
    h, w = grid
    D = book_n.shape[1]
    live_n = live_codes(book_n)
    background = int(live_n[np.argmin(np.linalg.norm(book_n[live_n], axis=1))])
    inside = live_n[live_n != background]
    # A smooth "anatomy" field: anchor(z, y, x) = A0 + A1 cos(pi y) + A2 sin(pi x) + A3 z + A4 yx
    A = rng.normal(size=(5, D)) / np.sqrt(D)
    z = (np.arange(depth_bins) + 0.5) / depth_bins
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    zz, yy, xx = z[:, None], y.ravel()[None, :], x.ravel()[None, :]
    basis = np.stack(
        np.broadcast_arrays(
            np.ones_like(zz * yy),
            np.cos(np.pi * yy) + 0 * zz,
            np.sin(np.pi * xx) + 0 * zz,
            2 * zz - 1 + 0 * yy,
            yy * xx + 0 * zz,
        ),
        axis=-1,
    )  # (Z, P, 5)
    anchors = (basis @ A).reshape(-1, D)
    p_in = _zipf_by_proximity(book_n[inside].astype(np.float64), anchors, exponent)
    probs = np.zeros((anchors.shape[0], live_n.size))
    col = np.searchsorted(live_n, inside)
    probs[:, col] = p_in
    # Outside the head (a disc whose radius follows the depth) the background code dominates.
    radius = 0.35 + 0.75 * np.sin(np.pi * (0.08 + 0.84 * z))  # (Z,)
    outside = (np.sqrt(yy**2 + xx**2) > radius[:, None]).ravel()
    bg_col = int(np.searchsorted(live_n, background))
    probs[outside] *= 0.05
    probs[outside, bg_col] += 0.95
    normal_cdf = np.cumsum(probs, axis=1)

    live_a = live_codes(book_a)
    no_lesion = int(live_a[np.argmin(np.linalg.norm(book_a[live_a], axis=1))])
    lesion = live_a[live_a != no_lesion]
    types = rng.normal(size=(lesion_types * 2, D)) / np.sqrt(D)  # (core, rim) anchor per type
    p_les = _zipf_by_proximity(book_a[lesion].astype(np.float64), types, exponent)
    lesion_cdf = np.cumsum(p_les, axis=1)
    return _SyntheticUsage(
        normal_cdf, live_n, background, lesion_cdf, lesion, no_lesion, grid, depth_bins
    )


def _synthetic_volumes(
    usage: _SyntheticUsage,
    n_volumes: int,
    rng: np.random.Generator,
    persistence: float,
    diseased: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw n_volumes volumes: normal (V, S, P) and abnormal (V, S, P) uint16, lesion area (V, S)."""
    h, w = usage.grid
    S, P, V = SLICES_PER_VOLUME, h * w, n_volumes
    Z = usage.depth_bins
    # Heads differ in size and position along z: each volume maps its slices to depth bins
    # through its own offset and scale.
    offset = rng.uniform(-0.08, 0.08, (V, 1))
    scale = rng.uniform(0.9, 1.1, (V, 1))
    depth = np.clip(((np.arange(S)[None, :] / (S - 1) - 0.5) * scale + 0.5 + offset), 0, 1 - 1e-9)
    zbin = (depth * Z).astype(np.int64)  # (V, S)
    row = zbin[:, :, None] * P + np.arange(P)[None, None, :]  # (V, S, P)
    fresh = usage.normal_live[_sample_rows(usage.normal_cdf, row, rng)]
    normal = _persist(fresh, rng.random((V, S, P)) < persistence).astype(np.uint16)

    abnormal = np.full((V, S, P), usage.no_lesion, np.uint16)
    area = np.zeros((V, S), np.int64)
    y, x = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    y, x = y.ravel(), x.ravel()
    T = usage.lesion_cdf.shape[0] // 2
    sick = np.flatnonzero(rng.random(V) < diseased)
    for v in sick:
        length = int(rng.integers(20, 71))
        start = int(rng.integers(20, S - 20 - length))
        radius = rng.uniform(1.0, 3.5)
        cy, cx = rng.uniform(2, h - 2), rng.uniform(2, w - 2)
        t = int(rng.integers(T))
        s = np.arange(length)
        r = radius * np.sqrt(np.clip(1 - ((s - (length - 1) / 2) / (length / 2)) ** 2, 0, 1))
        dist = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)  # (P,)
        inside = dist[None, :] < r[:, None]  # (length, P)
        core = dist[None, :] < 0.5 * r[:, None]
        kind = np.where(core, 2 * t, 2 * t + 1)
        codes = usage.lesion_live[_sample_rows(usage.lesion_cdf, kind, rng)]
        codes = _persist(codes[None], (rng.random((1, length, P)) < persistence))[0]
        block = abnormal[v, start : start + length]
        block[inside] = codes[inside]
        area[v, start : start + length] = inside.sum(axis=1)
    return normal, abnormal, area


def synthetic(
    n_slices: int,
    n_queries: int = 50,
    *,
    seed: int = 0,
    K: int = 512,
    D: int = 64,
    grid: tuple[int, int] = (8, 8),
    dead_fraction: float = 0.65,
    persistence: float = 0.7,
    diseased: float = 0.8,
    block_volumes: int = 512,
) -> Workload:
    """A synthetic archive of ``n_slices`` rows (whole volumes of 155, the last one cut) + queries.

    Memory: the codes cost 2·h·w·2 B per slice (256 B at 8×8); generation works ``block_volumes``
    volumes at a time, so 1M slices need well under 1 GB besides the result.
    """
    if n_slices < 1 or n_queries < 1:
        raise ValueError(f"n_slices and n_queries must be >= 1, got {n_slices}, {n_queries}")
    rng = np.random.default_rng(seed)
    book_n = synthetic_codebook(rng, K, D, dead_fraction)
    book_a = synthetic_codebook(rng, K, D, dead_fraction)
    usage = _synthetic_usage(rng, book_n, book_a, grid)
    return _assemble(
        book_n,
        book_a,
        n_slices,
        n_queries,
        seed,
        grid,
        block_volumes,
        lambda n_vol, r: _synthetic_volumes(usage, n_vol, r, persistence, diseased),
        f"synthetic(seed={seed}, K={K}, D={D}, dead_fraction={dead_fraction}, "
        f"persistence={persistence}, diseased={diseased})",
    )


def _assemble(book_n, book_a, n_slices, n_queries, seed, grid, block_volumes, draw, source):
    h, w = grid
    S = SLICES_PER_VOLUME
    n_vol = -(-n_slices // S)
    codes_n = np.empty((n_vol * S, h, w), np.uint16)
    codes_a = np.empty((n_vol * S, h, w), np.uint16)
    for b, v0 in enumerate(range(0, n_vol, block_volumes)):
        nv = min(block_volumes, n_vol - v0)
        normal, abnormal, _ = draw(nv, np.random.default_rng([seed, 1, b]))
        codes_n[v0 * S : (v0 + nv) * S] = normal.reshape(-1, h, w)
        codes_a[v0 * S : (v0 + nv) * S] = abnormal.reshape(-1, h, w)
    volume_ids = np.repeat(np.arange(n_vol, dtype=np.int64), S)
    # Queries: the largest-lesion slice of new diseased volumes (the paper's 4.4.6 protocol).
    qn, qa, qv = [], [], []
    qrng = np.random.default_rng([seed, 2])
    next_id = n_vol
    while len(qn) < n_queries:
        normal, abnormal, area = draw(max(n_queries, 8), qrng)
        for v in range(normal.shape[0]):
            if len(qn) == n_queries:
                break
            if area[v].max() == 0:
                continue
            s = int(np.argmax(area[v]))
            qn.append(normal[v, s].reshape(h, w))
            qa.append(abnormal[v, s].reshape(h, w))
            qv.append(next_id)
            next_id += 1
        if not qn and area.max() == 0:  # a workload without lesions: take mid slices instead
            for v in range(min(n_queries, normal.shape[0])):
                qn.append(normal[v, S // 2].reshape(h, w))
                qa.append(abnormal[v, S // 2].reshape(h, w))
                qv.append(next_id)
                next_id += 1
    return Workload(
        book_n,
        book_a,
        codes_n[:n_slices],
        codes_a[:n_slices],
        volume_ids[:n_slices],
        np.stack(qn),
        np.stack(qa),
        np.asarray(qv, np.int64),
        source,
    )


# ---------------------------------------------------------------------------- real index


def read_index_usage(index_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Codebooks and code arrays of an index directory (names of docs/architecture.md).

    Returns codebook_normal (K, D) float32, codebook_abnormal (K, D) float32 and the code arrays
    normal, abnormal (N, h, w) uint16 read whole from ``codes.zarr``.
    """
    import zarr

    index_dir = Path(index_dir)
    books = []
    for name in ("codebook_normal.npy", "codebook_abnormal.npy"):
        path = index_dir / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing; --from-index needs an index directory "
                "written by `fdn-index build`"
            )
        book = np.load(path)
        if book.ndim != 2:
            raise ValueError(f"{path}: expected a (K, D) codebook, found shape {book.shape}")
        books.append(book.astype(np.float32))
    codes_path = index_dir / "codes.zarr"
    if not codes_path.exists():
        raise FileNotFoundError(f"{codes_path}: missing; is {index_dir} a complete index?")
    group = zarr.open_group(str(codes_path), mode="r")
    arrays = []
    for name, book in zip(("normal", "abnormal"), books, strict=True):
        codes = np.asarray(group[name][...])
        if codes.ndim != 3 or codes.dtype != np.uint16:
            raise ValueError(
                f"{codes_path}/{name}: expected (N, h, w) uint16, found {codes.shape} {codes.dtype}"
            )
        if codes.size and int(codes.max()) >= book.shape[0]:
            raise ValueError(
                f"{codes_path}/{name}: code {int(codes.max())} out of range for a "
                f"codebook of K={book.shape[0]}"
            )
        arrays.append(codes)
    if arrays[0].shape != arrays[1].shape or arrays[0].shape[0] == 0:
        raise ValueError(
            f"{codes_path}: normal {arrays[0].shape} and abnormal "
            f"{arrays[1].shape} must be equal and non-empty"
        )
    return books[0], books[1], arrays[0], arrays[1]


def from_index(
    index_dir: Path,
    n_slices: int,
    n_queries: int = 50,
    *,
    seed: int = 0,
    persistence: float = 0.7,
    block_volumes: int = 512,
) -> Workload:
    """A workload with a real index's codebooks and per-position code usage.

    Every grid position draws its codes from the empirical distribution of that position over
    all rows of the index (normal and abnormal separately), with the same slice-to-slice
    persistence as `synthetic`. Queries come from the same process (other seed); their "largest
    lesion" is the slice with most positions off the position's most frequent abnormal code.
    """
    book_n, book_a, real_n, real_a = read_index_usage(index_dir)
    grid = real_n.shape[1:]
    P = grid[0] * grid[1]
    cdfs, modes = [], []
    for real, book in ((real_n, book_n), (real_a, book_a)):
        flat = real.reshape(real.shape[0], P).astype(np.int64)
        counts = np.zeros((P, book.shape[0]))
        np.add.at(counts, (np.broadcast_to(np.arange(P), flat.shape), flat), 1)
        cdfs.append(np.cumsum(counts / counts.sum(axis=1, keepdims=True), axis=1))
        modes.append(counts.argmax(axis=1))

    def draw(n_vol, rng):
        S = SLICES_PER_VOLUME
        row = np.broadcast_to(np.arange(P), (n_vol, S, P))
        out = []
        for cdf in cdfs:
            fresh = _sample_rows(cdf, row, rng)
            out.append(_persist(fresh, rng.random((n_vol, S, P)) < persistence).astype(np.uint16))
        area = (out[1] != modes[1][None, None, :]).sum(axis=2)
        return out[0], out[1], area

    log.info("workload from %s: %d real rows, grid %s", index_dir, real_n.shape[0], grid)
    return _assemble(
        book_n,
        book_a,
        n_slices,
        n_queries,
        seed,
        tuple(grid),
        block_volumes,
        draw,
        f"from-index({Path(index_dir).resolve()}, {real_n.shape[0]} rows, seed={seed}, "
        f"persistence={persistence})",
    )
