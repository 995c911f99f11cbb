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
from dataclasses import asdict
from pathlib import Path

import click

from benchmarks import report as rp
from benchmarks import workload as wl
from benchmarks.options import out_option
from benchmarks.speed_engines import SpeedRun, measure_mode
from benchmarks.speed_measure import MODES, SpeedConfig, cpu_seconds
from benchmarks.speed_report import evaluate_targets, write_report

log = logging.getLogger(__name__)


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

    ctx = SpeedRun(cfg, w, bandwidth["read_gbps"] * 1e9, "gpu" if gpu_available() else "cpu", say)
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
                measure_mode(ctx, idx, sub, mode, builds[n])
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
@out_option(None, "speed-cpu; with --quick, speed-cpu-quick")
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
    start = time.perf_counter()

    def progress(msg):
        click.echo(f"[{time.perf_counter() - start:7.1f}s] {msg}", err=True)

    try:
        results = run(cfg, progress=progress)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    path = write_report(results, rp.results_dir(out or cfg.name))
    if as_json:
        click.echo(json.dumps(rp.jsonable(results["targets"]), indent=2))
    else:
        for t in results["targets"]:
            status = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
            click.echo(f"{status:>12}  {t['target']}\n              {t['measured']}")
        click.echo(f"report: {path / 'report.md'} ({results['wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
