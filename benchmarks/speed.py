"""Search speed and memory of every engine against Euclidean search on decoded floats.

Run ``python -m benchmarks.speed`` (``--help`` for options). For every archive size N and every
mode (S_normal, S_abnormal, S_sum) it measures, in one process and on one data set:

- ``lut``: hashindex's exact compiled look-up-table engine, with D_H, D_E and D_A;
- ``numpy``: hashindex's numpy reference engine (N ≤ ``numpy_max_n`` only);
- ``faiss-binary-flat``: hashindex's FAISS ``IndexBinaryFlat`` engine on the packed bits (D_H),
  plus a sweep of ``faiss.cvar.hamming_batch_size`` on raw k-NN calls to report the best value;
- ``faiss-binary-ivf``: hashindex's FAISS ``IndexBinaryIVF`` engine at several nprobe, with
  volume-wise recall@10 against the exact Hamming result;
- ``faiss-float-l2`` / ``faiss-float-ip``: ``faiss.IndexFlatL2`` / ``IndexFlatIP`` on the decoded
  float vectors (64 positions × D floats per grid, both grids concatenated for S_sum; IP on
  L2-normalised vectors, i.e. cosine) — the search a user would otherwise run — wherever the
  vectors fit the float memory budget.

Every figure is the exact volume-wise top-10 (section 4.4.6; approximate for IVF) of one query
slice: single-query latency p50/p95 (warm, one query per call), batched throughput (one call with
a batch of queries), build time, bytes per slice in RAM and on disk, and the bandwidth floor
(bytes one scan must read ÷ memory bandwidth measured in the same run). FAISS-based engines
reach volume-wise top-Q by growing k (``hashindex.volumes.volumes_from_knn``, the same helper
for binary and float indexes), so their latency includes the extra k-NN rounds that neighbouring
slices of one volume force; the single-k raw scan time is reported beside it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import faiss
import numpy as np

from benchmarks import report as rp
from benchmarks import workload as wl
from benchmarks.speed_measure import (
    DISTANCES,
    MODES,
    RAW_K,
    TOPQ,
    FloatFlat,
    cpu_seconds,
    recall_at_q,
    time_batch,
    time_single,
)
from benchmarks.speed_report import evaluate_targets, write_report

log = logging.getLogger(__name__)


@dataclass
class SpeedConfig:
    """Everything a run depends on (stored whole in results.json)."""

    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    queries: int = 50
    batch: int = 64
    seed: int = 0
    K: int = 512
    D: int = 64
    bit_budget: int = 64
    ivf_nlist: int = 128
    nprobes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    hamming_batch_sizes: tuple[int, ...] = (256, 1024, 4096, 16384, 65536)
    numpy_max_n: int = 100_000
    float_budget_bytes: int = 4 << 30
    max_seconds_per_figure: float = 8.0
    from_index: str | None = None
    name: str = "speed-cpu"
    targets: dict = field(
        default_factory=lambda: {
            "sum_1m_ms": 30.0,
            "speedup_vs_float_l2_100k": 20.0,
            "ivf_recall": 0.95,
            "ivf_speedup": 5.0,
        }
    )


# ---------------------------------------------------------------------------- timing helpers


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


def _disk_bytes(idx, w: wl.Workload, n: int, tmp: Path) -> dict:
    """On-disk bytes: zarr codes (as `fdn-index build` writes them) and hashindex files."""
    import zarr

    d = tmp / f"n{n}"
    group = zarr.open_group(str(d / "codes.zarr"), mode="w")
    for name, arr in (("normal", w.codes_normal[:n]), ("abnormal", w.codes_abnormal[:n])):
        stored = group.create_array(
            name, shape=arr.shape, chunks=(4096, *arr.shape[1:]), dtype="uint16"
        )
        stored[:] = arr
    idx.write(d / "hashindex")
    out = {f"codes_{b}": rp.dir_bytes(d / "codes.zarr" / b) for b in ("normal", "abnormal")}
    for mode in MODES:
        out[f"faiss_flat_{mode}"] = rp.dir_bytes(d / "hashindex" / f"faiss_{mode}.index")
        p = d / "hashindex" / f"faiss_ivf_{mode}.index"
        out[f"faiss_ivf_{mode}"] = rp.dir_bytes(p) if p.exists() else None
    out["tables"] = sum(rp.dir_bytes(p) for p in (d / "hashindex").glob("*.np*"))
    shutil.rmtree(d, ignore_errors=True)
    return out


@dataclass
class _Run:
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


def run(cfg: SpeedConfig, progress=None) -> dict:
    """Run the suite; returns the results dict that `write_report` turns into files.

    ``progress``: optional callable(str) told what is being measured.
    """
    from hashindex import HashIndex
    from hashindex.engines import gpu_available

    def say(msg):
        log.info(msg)
        if progress is not None:
            progress(msg)

    if not cfg.sizes or min(cfg.sizes) < 1:
        raise ValueError(f"sizes must be positive slice counts, got {cfg.sizes}")
    if cfg.queries < 1 or cfg.batch < 1:
        raise ValueError(f"queries and batch must be >= 1, got {cfg.queries}, {cfg.batch}")
    t_run = time.perf_counter()
    sizes = tuple(sorted(set(cfg.sizes)))
    machine = rp.machine_info()
    say("measuring memory bandwidth")
    bandwidth = rp.measure_bandwidth(1 << 30 if sizes[-1] >= 100_000 else 1 << 26)

    say(f"generating the workload ({sizes[-1]:,} slices)")
    t = time.perf_counter()
    if cfg.from_index:
        w = wl.from_index(Path(cfg.from_index), sizes[-1], cfg.queries, seed=cfg.seed)
    else:
        w = wl.synthetic(sizes[-1], cfg.queries, seed=cfg.seed, K=cfg.K, D=cfg.D)
    gen_s = time.perf_counter() - t

    say("optimizing the bit tables of both codebooks (once)")
    t = time.perf_counter()
    base = HashIndex.build(
        w.codebook_normal,
        w.codebook_abnormal,
        bit_budget=cfg.bit_budget,
        faiss_indexes=False,
        seed=cfg.seed,
    )
    optimize_s = time.perf_counter() - t

    ctx = _Run(cfg, w, bandwidth["read_gbps"] * 1e9, "gpu" if gpu_available() else "cpu", say)
    builds = {}
    tmp = Path(tempfile.mkdtemp(prefix="fdn-speed-"))
    try:
        for n in sizes:
            sub = w.head(n)
            # HashIndex(tables, report) reuses the optimized tables of `base`: the bit tables
            # are optimized once per codebook, not once per N.
            lut_only = HashIndex(base.tables, base.report, faiss_indexes=False, seed=cfg.seed)
            t = time.perf_counter()
            lut_only.add(sub.codes_normal, sub.codes_abnormal, sub.volume_ids)
            lut_build = time.perf_counter() - t
            del lut_only
            say(f"N={n:,}: packing bits and filling IndexBinaryFlat (3 modes)")
            idx = HashIndex(base.tables, base.report, faiss_indexes=True, seed=cfg.seed)
            t = time.perf_counter()
            idx.add(sub.codes_normal, sub.codes_abnormal, sub.volume_ids)
            flat_build = time.perf_counter() - t
            nlist = max(1, min(cfg.ivf_nlist, n // 39))  # FAISS wants >= 39 points per list
            say(f"N={n:,}: training IndexBinaryIVF (nlist={nlist}, 3 modes)")
            t = time.perf_counter()
            idx.train_ivf(nlist)
            ivf_build = time.perf_counter() - t
            builds[n] = {
                "lut_add_s": lut_build,
                "flat_add_s": flat_build,
                "ivf_train_add_s": ivf_build,
                "nlist": nlist,
            }
            ctx.disk[n] = _disk_bytes(idx, w, n, tmp)
            for mode in MODES:
                _measure_mode(ctx, idx, sub, mode, builds[n])
            del idx
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    results = {
        "config": asdict(cfg),
        "machine": machine,
        "device": ctx.device,
        "bandwidth": bandwidth,
        "workload": {
            "source": w.source,
            "grid": list(w.codes_normal.shape[1:]),
            "K": int(w.codebook_normal.shape[0]),
            "D": int(w.codebook_normal.shape[1]),
            "live_normal": int(wl.live_codes(w.codebook_normal).size),
            "live_abnormal": int(wl.live_codes(w.codebook_abnormal).size),
            "slices_per_volume": wl.SLICES_PER_VOLUME,
            "generate_s": gen_s,
        },
        "binarization": {"optimize_s": optimize_s, "report": base.report},
        "builds": {str(k): v for k, v in builds.items()},
        "rows": ctx.rows,
        "agreement": ctx.agreement,
        "hamming_batch_tuning": ctx.tuning,
        "disk_bytes": {str(k): v for k, v in ctx.disk.items()},
        "skipped": ctx.skipped,
        "lut_breakdown": ctx.breakdown,
        "peak_rss_bytes": rp.peak_rss_bytes(),
        "load_average_1m_end": os.getloadavg()[0],
        "cpu_share": cpu_seconds() / (time.perf_counter() - t_run) / machine["cores"],
        "wall_s": time.perf_counter() - t_run,
    }
    results["targets"] = evaluate_targets(results)
    return results


def _measure_mode(ctx: _Run, idx, sub: wl.Workload, mode: str, build: dict) -> None:
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


# ---------------------------------------------------------------------------- targets


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        out = tuple(int(v.replace("_", "")) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from exc
    if not out or min(out) < 1:
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--sizes",
    callback=_int_list,
    default=None,
    help="Comma-separated archive sizes in slices [10000,100000,1000000; --quick: 10000,100000].",
)
@click.option(
    "--queries",
    type=click.IntRange(1),
    default=None,
    help="Query slices, and single-query calls per figure [50; --quick: 20].",
)
@click.option(
    "--batch",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Queries per call for the batched throughput.",
)
@click.option(
    "--from-index",
    "from_index",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Take the codebooks and per-position code usage from this "
    "index directory instead of the synthetic model.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Results directory [benchmarks/results/speed-cpu; --quick: "
    "benchmarks/results/speed-cpu-quick].",
)
@click.option("--quick", is_flag=True, help="Sizes 10k and 100k, 20 queries: a few minutes.")
@click.option(
    "--bit-budget",
    type=click.IntRange(8),
    default=64,
    show_default=True,
    help="Bits per grid position kept for D_H and the FAISS binary indexes (multiple of 8).",
)
@click.option(
    "--ivf-nlist",
    type=click.IntRange(1),
    default=128,
    show_default=True,
    help="IndexBinaryIVF lists (capped at N/39).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Workload seed.")
@click.option("--json", "as_json", is_flag=True, help="Print the targets as JSON on stdout.")
def main(sizes, queries, batch, from_index, out, quick, bit_budget, ivf_nlist, seed, as_json):
    """Search speed and memory of every engine against Euclidean search on decoded floats."""
    import json

    logging.basicConfig(level=logging.WARNING)
    if bit_budget % 8:
        raise click.BadParameter(
            f"must be a multiple of 8, got {bit_budget}", param_hint="--bit-budget"
        )
    cfg = SpeedConfig(
        sizes=sizes or ((10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)),
        queries=queries or (20 if quick else 50),
        batch=batch,
        seed=seed,
        bit_budget=bit_budget,
        ivf_nlist=ivf_nlist,
        from_index=from_index,
        name="speed-cpu-quick" if quick else "speed-cpu",
    )
    out_dir = Path(out) if out else rp.RESULTS_ROOT / cfg.name
    start = time.perf_counter()

    def progress(msg):
        click.echo(f"[{time.perf_counter() - start:7.1f}s] {msg}", err=True)

    try:
        results = run(cfg, progress=progress)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    path = write_report(results, out_dir)
    if as_json:
        click.echo(json.dumps(rp.jsonable(results["targets"]), indent=2))
    else:
        for t in results["targets"]:
            status = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
            click.echo(f"{status:>12}  {t['target']}\n              {t['measured']}")
        click.echo(f"report: {path / 'report.md'} ({results['wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
