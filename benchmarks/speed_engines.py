"""The speed benchmark's measurements of one (N, mode): every engine's latency, throughput and
agreement with the exact result, the FAISS hamming_batch_size sweep and where one LUT query
spends its time. `benchmarks.speed.run` calls `measure_mode` for every size and mode."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import faiss
import numpy as np

from benchmarks import report as rp
from benchmarks import workload as wl
from benchmarks.speed_measure import (
    DISTANCES,
    RAW_K,
    TOPQ,
    FloatFlat,
    SpeedConfig,
    recall_at_q,
    time_batch,
    time_single,
)


def _grids(w: wl.Workload, mode: str, query: bool = False) -> list[np.ndarray]:
    """The archive's (or the queries') code grids a mode searches: one array, two for sum."""
    n, a = (w.query_normal, w.query_abnormal) if query else (w.codes_normal, w.codes_abnormal)
    return {"normal": [n], "abnormal": [a], "sum": [n, a]}[mode]


def _books(w: wl.Workload, mode: str):
    return {
        "normal": [w.codebook_normal],
        "abnormal": [w.codebook_abnormal],
        "sum": [w.codebook_normal, w.codebook_abnormal],
    }[mode]


def _agree(name: str, a: np.ndarray, b: np.ndarray, rtol: float) -> dict:
    """Compare two (B, Q) sorted distance arrays of volume-wise top-Q results."""
    diff = np.abs(a - b)
    tol = rtol * np.maximum(1.0, np.abs(a))
    return {
        "check": name,
        "max_abs_diff": float(diff.max()),
        "rtol": rtol,
        "ok": bool((diff <= tol).all()),
    }


@dataclass
class SpeedRun:
    """State shared by the measurements of one run."""

    cfg: SpeedConfig
    w: wl.Workload
    gbps: float
    device: str
    say: object
    rows: list = field(default_factory=list)
    agreement: list = field(default_factory=list)
    tuning: list = field(default_factory=list)
    disk: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    breakdown: dict = field(default_factory=dict)

    def add_row(self, **kw) -> None:
        kw.setdefault("device", "cpu")
        self.rows.append(kw)


def measure_mode(ctx: SpeedRun, idx, sub: wl.Workload, mode: str, build: dict) -> None:
    """All engines for one (N, mode): appends rows, agreement checks and tuning to ``ctx``."""
    from hashindex.packing import pack_grids
    from hashindex.volumes import volumes_from_knn

    cfg, w, n, say = ctx.cfg, ctx.w, sub.n, ctx.say
    qn, qa, nq = w.query_normal, w.query_abnormal, w.query_normal.shape[0]
    P = int(np.prod(w.codes_normal.shape[1:]))
    books = ("normal", "abnormal") if mode == "sum" else (mode,)
    code_bytes = {b: idx.codes[b].dtype.itemsize * P for b in books}
    lut_ram = sum(code_bytes[b] + 8 for b in books) + 8  # grids, ‖r‖² per book, volume id
    lut_disk = sum(ctx.disk[n][f"codes_{b}"] for b in books) / n

    def engine_fn(engine, dist, nprobe=None):
        def fn(ids):
            return idx.search_volumes(
                qn[ids], qa[ids], TOPQ, mode=mode, distance=dist, engine=engine, nprobe=nprobe
            )

        return fn

    exact = {}
    every = np.arange(nq)
    for dist in DISTANCES:
        for engine in ("lut", "fastscan", "numpy"):
            if engine == "numpy" and n > cfg.numpy_max_n:
                continue
            say(f"N={n:,} {mode}: {engine} {dist}")
            fn = engine_fn(engine, dist)
            lat = time_single(fn, nq, cfg.queries, cfg.max_seconds_per_figure)
            # numpy answers a batch one query after another: batching changes nothing there,
            # so its throughput is 1 / mean latency rather than another long call.
            if engine != "numpy":
                thr, hits = time_batch(fn, nq, cfg.batch)
            else:
                thr, hits = {"batch": 1, "throughput_qps": 1e3 / lat["mean_ms"]}, fn(every)
            if engine == "lut":
                exact[dist] = hits
            else:
                same = np.array_equal(hits.volumes, exact[dist].volumes)
                check = _agree(
                    f"{engine} == lut ({dist}, {mode}, N={n})",
                    hits.distances,
                    exact[dist].distances,
                    0.0 if engine == "fastscan" else 1e-12,
                )
                check["ok"] = bool(check["ok"] and same)
                ctx.agreement.append(check)
            scan = n * sum(code_bytes.values())
            ctx.add_row(
                engine=engine,
                distance=dist,
                mode=mode,
                n=n,
                **lat,
                **thr,
                build_s=build["lut_add_s"],
                ram_bytes_per_slice=lut_ram
                + (sum(code_bytes.values()) if engine == "fastscan" else 0),
                disk_bytes_per_slice=lut_disk,
                recall_at_10=1.0,
                scan_bytes=scan,
                floor_ms=scan / ctx.gbps * 1e3,
            )

    if mode == "sum" and n == max(cfg.sizes):
        ctx.breakdown = _lut_breakdown(idx, w, nq)

    # FAISS IndexBinaryFlat through hashindex (which picks its own hamming_batch_size).
    say(f"N={n:,} {mode}: faiss binary flat")
    flat = idx.flat[mode].cpu
    xq = np.concatenate(
        [pack_grids(idx.tables[b].packed, qn if b == "normal" else qa) for b in books], axis=1
    )
    fn = engine_fn("faiss-flat", "hamming")
    lat = time_single(fn, nq, cfg.queries, cfg.max_seconds_per_figure)
    thr, hits = time_batch(fn, nq, cfg.batch)
    ctx.agreement.append(
        _agree(
            f"faiss-flat == lut (hamming, {mode}, N={n})",
            hits.distances,
            exact["hamming"].distances,
            0.0,
        )
    )
    raw = time_single(lambda ids: flat.search(xq[ids], RAW_K), nq, 10, cfg.max_seconds_per_figure)
    flat_scan = n * flat.code_size
    ctx.add_row(
        engine="faiss-binary-flat",
        distance="hamming",
        mode=mode,
        n=n,
        device=ctx.device,
        **lat,
        **thr,
        build_s=build["flat_add_s"],
        ram_bytes_per_slice=flat.code_size,
        raw_knn_p50_ms=raw["p50_ms"],
        disk_bytes_per_slice=ctx.disk[n][f"faiss_flat_{mode}"] / n,
        recall_at_10=1.0,
        scan_bytes=flat_scan,
        floor_ms=flat_scan / ctx.gbps * 1e3,
        code_size=flat.code_size,
    )
    flat_p50 = lat["p50_ms"]
    ctx.tuning.append(_tune_hamming_batch(flat, xq, cfg, n, mode))

    # FAISS IndexBinaryIVF through hashindex at several nprobe (IVF runs on the CPU only).
    ivf = idx.ivf[mode].cpu
    nlist = build["nlist"]
    for nprobe in sorted({min(p, nlist) for p in cfg.nprobes}):
        say(f"N={n:,} {mode}: faiss binary IVF nprobe={nprobe}")
        fn = engine_fn("faiss-ivf", "hamming", nprobe)
        lat = time_single(fn, nq, cfg.queries, cfg.max_seconds_per_figure)
        thr, hits = time_batch(fn, nq, cfg.batch)
        rec = recall_at_q(hits, exact["hamming"])
        scan = flat_scan * nprobe / nlist  # expected share of the database in nprobe lists
        ctx.add_row(
            engine="faiss-binary-ivf",
            distance="hamming",
            mode=mode,
            n=n,
            nprobe=nprobe,
            nlist=nlist,
            **lat,
            **thr,
            build_s=build["ivf_train_add_s"],
            ram_bytes_per_slice=ivf.code_size + 8,
            disk_bytes_per_slice=(ctx.disk[n][f"faiss_ivf_{mode}"] or 0) / n,
            recall_at_10=rec,
            speedup_vs_flat=flat_p50 / lat["p50_ms"],
            scan_bytes=scan,
            floor_ms=scan / ctx.gbps * 1e3,
        )

    # FAISS IndexFlatL2 / IndexFlatIP on the decoded float vectors, where they fit in memory.
    dim = P * sum(b.shape[1] for b in _books(w, mode))
    if n * dim * 4 > cfg.float_budget_bytes:
        msg = (
            f"faiss-float at N={n:,} ({mode}): the float32 vectors alone take "
            f"{n * dim * 4 / 2**30:.1f} GiB ({dim} floats per slice), over the float budget "
            f"of {cfg.float_budget_bytes / 2**30:.1f} GiB on this shared machine"
        )
        ctx.skipped.append(msg)
        say(msg)
        return
    for metric, ref in (("l2", "euclidean"), ("ip", "angular")):
        say(f"N={n:,} {mode}: faiss float {metric}")
        ff = FloatFlat(metric, _books(w, mode), ctx.device == "gpu")
        t = time.perf_counter()
        ff.build(_grids(sub, mode))
        build_s = time.perf_counter() - t
        knn = ff.knn(ff.decode(_grids(w, mode, query=True)))

        def fn(ids, knn=knn):
            return volumes_from_knn(
                lambda i, k: knn(ids[i], k), ids.size, n, TOPQ, sub.volume_ids, None
            )

        lat = time_single(fn, nq, cfg.queries, cfg.max_seconds_per_figure)
        thr, hits = time_batch(fn, nq, cfg.batch)
        raw = time_single(lambda ids, knn=knn: knn(ids, RAW_K), nq, 10, cfg.max_seconds_per_figure)
        if mode != "sum":  # here the float metric is exactly this mode's D_E / D_A
            ctx.agreement.append(
                _agree(
                    f"faiss-float-{metric} == lut ({ref}, {mode}, N={n})",
                    ff.to_distance(hits.distances),
                    exact[ref].distances,
                    1e-4,
                )
            )
        scan = n * dim * 4
        ctx.add_row(
            engine=f"faiss-float-{metric}",
            distance=ref,
            mode=mode,
            n=n,
            device=ctx.device,
            **lat,
            **thr,
            build_s=build_s,
            ram_bytes_per_slice=dim * 4,
            disk_bytes_per_slice=dim * 4,
            raw_knn_p50_ms=raw["p50_ms"],
            recall_at_10=None,
            scan_bytes=scan,
            floor_ms=scan / ctx.gbps * 1e3,
        )
        del ff, knn


def _tune_hamming_batch(flat, xq: np.ndarray, cfg: SpeedConfig, n: int, mode: str) -> dict:
    """Raw k-NN time of IndexBinaryFlat per ``faiss.cvar.hamming_batch_size`` value."""
    old = faiss.cvar.hamming_batch_size
    out = {"n": n, "mode": mode, "k": RAW_K, "code_size": int(flat.code_size), "values": []}
    idx = np.arange(cfg.batch) % xq.shape[0]
    xb = np.ascontiguousarray(xq[idx])
    try:
        for hb in cfg.hamming_batch_sizes:
            faiss.cvar.hamming_batch_size = int(hb)
            flat.search(xq[:1], RAW_K)
            single = []
            for i in range(min(10, xq.shape[0])):
                t = time.perf_counter()
                flat.search(xq[i : i + 1], RAW_K)
                single.append(time.perf_counter() - t)
            t = time.perf_counter()
            flat.search(xb, RAW_K)
            batch_s = time.perf_counter() - t
            out["values"].append(
                {
                    "hamming_batch_size": int(hb),
                    "single_p50_ms": float(np.median(single) * 1e3),
                    "batch_qps": cfg.batch / batch_s,
                }
            )
    finally:
        faiss.cvar.hamming_batch_size = old
    out["best_single"] = min(out["values"], key=lambda v: v["single_p50_ms"])["hamming_batch_size"]
    out["best_batch"] = max(out["values"], key=lambda v: v["batch_qps"])["hamming_batch_size"]
    return out


def _lut_breakdown(idx, w: wl.Workload, nq: int) -> dict:
    """Where one exact S_sum query of the LUT engine spends its time (D_H, median of queries).

    Re-runs the engine's own steps one by one: the two table scans (`hashindex.engines.SCANS`),
    turning sums into distances and adding them (`hashindex.distances.finish`), and the
    volume-wise selection (`hashindex.volumes.topq_volumes`).
    """
    from hashindex.distances import finish
    from hashindex.engines import SCANS
    from hashindex.volumes import topq_volumes

    parts = {"scan_ms": [], "finish_ms": [], "volumes_ms": []}
    for i in range(min(nq, 20)):
        t0 = time.perf_counter()
        accs = {}
        for book, q in (("normal", w.query_normal), ("abnormal", w.query_abnormal)):
            t = idx.tables[book]
            accs[book] = SCANS["lut"](
                idx.codes[book], t.query_table(t.to_reps(q[i : i + 1])[0], "hamming")
            )
        t1 = time.perf_counter()
        dist = finish("hamming", accs["normal"]) + finish("hamming", accs["abnormal"])
        t2 = time.perf_counter()
        topq_volumes(dist, idx._vol_index, idx._vol_unique, TOPQ, None)
        t3 = time.perf_counter()
        parts["scan_ms"].append((t1 - t0) * 1e3)
        parts["finish_ms"].append((t2 - t1) * 1e3)
        parts["volumes_ms"].append((t3 - t2) * 1e3)
    out = {k: float(np.median(v)) for k, v in parts.items()}
    out["n"] = idx.ntotal
    out["lookups"] = 2 * idx.ntotal * idx.codes["normal"].shape[1]
    out["ns_per_lookup_per_core"] = (
        out["scan_ms"] * 1e6 * rp.machine_info()["cores"] / out["lookups"]
    )
    return out
