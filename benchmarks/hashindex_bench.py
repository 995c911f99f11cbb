"""Benchmarks of hashindex (not tests): Algorithm A.1 time at K = 512 and single-query latency.

Run:  .venv/bin/python benchmarks/hashindex_bench.py [--n 100000] [--n-large 1000000]
Writes benchmarks/results/hashindex/results.json and results.md.

Codebooks: "realistic" = 512 × 64 with 180 live Gaussian codes and 332 codes of norm ≈ 1e-7
(rounded to zero, as in a trained EMA codebook); "random" = 512 × 64 Gaussian. Code grids are
8 × 8; each position draws the zero code with probability 0.4, else a uniform live code; 155
slices per volume. Latency is the median over single queries of exact volume-wise top-10
(S_sum unless stated), after one warm-up query.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from hashindex import HashIndex
from hashindex.binarize import round_small_norms

OUT = Path(__file__).parent / "results" / "hashindex"


def codebook(kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cb = rng.normal(size=(512, 64)).astype(np.float32)
    if kind == "realistic":
        cb[180:] *= 1e-7
    return cb


def grids(rng, n, cb, h=8, w=8):
    live = np.flatnonzero(np.linalg.norm(cb, axis=1) >= 1e-5)
    zero = np.flatnonzero(np.linalg.norm(cb, axis=1) < 1e-5)
    g = live[rng.integers(0, live.size, (n, h, w))]
    if zero.size:
        g = np.where(rng.random((n, h, w)) < 0.4, zero[0], g)
    return g.astype(np.uint16)


def latency(fn, repeats: int) -> dict:
    fn(0)  # warm-up (compilation, page faults)
    times = []
    for r in range(repeats):
        t = time.perf_counter()
        fn(r + 1)
        times.append(time.perf_counter() - t)
    return {"median_ms": 1e3 * float(np.median(times)), "min_ms": 1e3 * float(np.min(times)),
            "repeats": repeats}


def bench_optimization() -> dict:
    out = {}
    for kind, seed in (("realistic", 1), ("random", 2)):
        index = HashIndex.build(codebook(kind, seed), codebook("realistic", 3)[:16].copy(),
                                faiss_indexes=False)
        rep = index.report["normal"]
        out[kind] = {k: rep[k] for k in ("K", "live", "distinct", "E", "E_distinct",
                                         "E_star", "compression", "seconds", "concordance")}
        print(f"A.1 {kind}: E*={rep['E_star']} ({rep['compression']:.4f}) "
              f"in {rep['seconds']:.1f}s", flush=True)
    return out


def bench_search(n: int, budget: int, nlist: int, repeats: int, with_faiss: bool) -> dict:
    cn, ca = codebook("realistic", 1), codebook("realistic", 4)
    t = time.perf_counter()
    index = HashIndex.build(cn, ca, bit_budget=budget, ivf_nlist=nlist if with_faiss else None,
                            faiss_indexes=with_faiss)
    build_s = time.perf_counter() - t
    rng = np.random.default_rng(5)
    gn, ga = grids(rng, n, round_small_norms(cn)), grids(rng, n, round_small_norms(ca))
    vol = (np.arange(n) // 155).astype(np.int64)
    t = time.perf_counter()
    index.add(gn, ga, vol)
    add_s = time.perf_counter() - t
    qn, qa = grids(rng, repeats + 1, round_small_norms(cn)), grids(rng, repeats + 1,
                                                                   round_small_norms(ca))
    res = {"n": n, "bit_budget": budget, "build_s": build_s, "add_s": add_s, "engines": {}}
    cases = [("lut", "hamming", "sum"), ("lut", "euclidean", "sum"), ("lut", "angular", "sum"),
             ("lut", "hamming", "normal")]
    if with_faiss:
        cases += [("numpy", "hamming", "sum"), ("faiss-flat", "hamming", "sum"),
                  ("faiss-ivf", "hamming", "sum")]
    for engine, dist, mode in cases:
        def one(r, engine=engine, dist=dist, mode=mode):
            index.search_volumes(qn[r:r + 1], qa[r:r + 1], 10, mode=mode, distance=dist,
                                 engine=engine, nprobe=8)
        reps = max(3, repeats // 4) if engine == "numpy" else repeats
        key = f"{engine}/{dist}/{mode}"
        res["engines"][key] = latency(one, reps)
        print(f"n={n} {key}: {res['engines'][key]['median_ms']:.1f} ms", flush=True)
    if with_faiss:
        exact = index.search_volumes(qn, qa, 10, engine="lut")
        approx = index.search_volumes(qn, qa, 10, engine="faiss-ivf", nprobe=8)
        rec = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact.volumes, approx.volumes)])
        res["ivf_nlist"], res["ivf_nprobe"], res["ivf_recall_at_10_volumes"] = nlist, 8, rec
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="code grids for all engines")
    ap.add_argument("--n-large", type=int, default=1_000_000, help="grids for the LUT engine")
    ap.add_argument("--budget", type=int, default=256, help="bit budget for the FAISS engines")
    ap.add_argument("--repeats", type=int, default=20, help="single queries per engine")
    ap.add_argument("--nlist", type=int, default=64, help="IVF lists")
    ap.add_argument("--skip-optimization", action="store_true", help="only the search part")
    args = ap.parse_args()
    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_start": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.skip_optimization:
        results["optimization_K512"] = bench_optimization()
        (OUT / "optimization.json").write_text(json.dumps(results["optimization_K512"], indent=1))
    results["search"] = [bench_search(args.n, args.budget, args.nlist, args.repeats, True)]
    if args.n_large:
        results["search"].append(bench_search(args.n_large, args.budget, args.nlist, args.repeats,
                                              False))
    results["machine"]["loadavg_end"] = os.getloadavg()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results["machine"]))


if __name__ == "__main__":
    main()
