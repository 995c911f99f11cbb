"""The GPU check: one command for a lent CUDA machine, about 6 minutes, each phase on its own.

    python -m benchmarks.gpu_check --out benchmarks/results/gpu-h200

Phases (a failing phase is reported and the next one runs; the report is rewritten after each):

1. **train**: `fdn-index train` on CUDA (preset cpu-64-null) for 30 s on a fresh synthetic
   archive, then `--resume` for 12 s more: steps, steps/s, the last lesion Dice.
2. **encode**: the shipped model's codes for the archive's slices on the CPU (fp32), on CUDA in
   fp32 (the default) and in bf16: the share of equal codes, and slices/s on the GPU.
3. **engine**: the torch engine against `lut` on the synthetic workload (1M slices, K = 512,
   8×8): identical answers in every mode and distance, then single-query p50 and batch-of-64
   throughput for each bound kernel; the same at 10M slices (ten 1M workloads of other seeds,
   made in parallel), S_sum only.

Timings synchronise with the device (every search returns host arrays). Nothing here is a test:
the exactness checks are reported, and the tests under tests/ hold the engine to lut.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "cpu-64-null"
MODES = ("normal", "abnormal", "sum")
DISTANCES = ("hamming", "euclidean", "angular")


def _cli(*args: str, timeout: float) -> str:
    command = [sys.executable, "-c", "from fdn_index_cli.main import main; main()", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"fdn-index {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}"
        )
    return done.stdout


def machine() -> dict:
    import torch

    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_count": os.cpu_count(),
        "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512bw", "avx512vbmi", "neon", "asimd"}),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def phase_train(work: Path) -> dict:
    archive, model = work / "archive", work / "model"
    _cli("synth", str(archive), "--cases", "16", "--size", "64", "--seed", "100",
         "--healthy-fraction", "0.3", timeout=120)  # fmt: skip
    first = json.loads(_cli("train", str(archive), "--preset", "cpu-64-null", "--out", str(model),
                            "--max-minutes", "0.5", "--device", "cuda", "--json", timeout=180))  # fmt: skip
    resumed = json.loads(_cli("train", str(archive), "--out", str(model), "--resume",
                              "--max-minutes", "0.2", "--device", "cuda", "--json", timeout=120))  # fmt: skip
    return {
        "first_run": first,
        "resumed": resumed,
        "steps_per_s_first": first["steps"] / max(first["elapsed_s"], 1e-9),
        "resume_continued": resumed["steps"] > first["steps"],
    }


def phase_encode(work: Path) -> dict:
    import torch

    from fdn.archive_index.encode import encode_images
    from fdn.data import Archive
    from fdn.training.checkpoint import load_model

    archive = Archive(work / "archive")
    model, config = load_model(SHIPPED_MODEL, device="cpu")
    images = np.concatenate(
        [archive.load(case, config.image_size).image for case in archive.case_ids]
    )
    torch.set_num_threads(os.cpu_count() or 1)
    cpu = encode_images(model, images, batch_size=256, device="cpu")
    out: dict = {"slices": int(images.shape[0])}
    for precision in ("fp32", "bf16"):
        model_gpu = load_model(SHIPPED_MODEL, device="cuda")[0]
        gpu = encode_images(model_gpu, images, batch_size=256, device="cuda", precision=precision)
        differ = [(c != g) for c, g in zip(cpu, gpu, strict=True)]
        out[precision] = {
            "normal_codes_equal": float(1 - differ[0].mean()),
            "abnormal_codes_equal": float(1 - differ[1].mean()),
            "slices_with_a_different_code": int((differ[0] | differ[1]).any(axis=(1, 2)).sum()),
            "deterministic": all(
                np.array_equal(a, b)
                for a, b in zip(
                    gpu, encode_images(model_gpu, images, 256, "cuda", precision=precision)
                )
            ),
        }
        big = np.concatenate([images] * max(1, 20_000 // images.shape[0]))
        encode_images(model_gpu, big[:2048], batch_size=1024, device="cuda", precision=precision)
        torch.cuda.synchronize()
        t = time.perf_counter()
        encode_images(model_gpu, big, batch_size=1024, device="cuda", precision=precision)
        out[precision]["slices_per_s"] = big.shape[0] / (time.perf_counter() - t)
    return out


def _workload_tile(args):
    """Slices of the synthetic workload of seed 0 (its codebooks and code usage), drawn with
    another seed: ``synthetic(n, seed=0)``'s generator, run per tile so tiles run in parallel."""
    from benchmarks import workload as wl

    n, tile_seed = args
    rng = np.random.default_rng(0)  # the draws of synthetic(seed=0) up to its usage
    book_n = wl.synthetic_codebook(rng, 512, 64, 0.65)
    book_a = wl.synthetic_codebook(rng, 512, 64, 0.65)
    usage = wl._synthetic_usage(rng, book_n, book_a, (8, 8))

    def draw(n_vol, r):
        return wl._synthetic_volumes(usage, n_vol, r, 0.7, 0.8)

    w = wl._assemble(book_n, book_a, n, 1, tile_seed, (8, 8), 512, draw, "tile")
    return w.codes_normal, w.codes_abnormal


def _engine_index(n_tiles: int, tile: int):
    """A HashIndex of n_tiles × `tile` slices of the synthetic workload (seed 0's codebooks and
    usage, tile t drawn with seed t), tiles made in parallel; volumes numbered across tiles."""
    from benchmarks import workload as wl
    from hashindex import HashIndex

    base = wl.synthetic(tile, 64, seed=0)
    parts = [(base.codes_normal, base.codes_abnormal)]
    if n_tiles > 1:
        with ProcessPoolExecutor(min(n_tiles - 1, 12)) as pool:
            parts += list(pool.map(_workload_tile, [(tile, s) for s in range(1, n_tiles)]))
    gn = np.concatenate([p[0] for p in parts])
    ga = np.concatenate([p[1] for p in parts])
    per_tile = base.volume_ids.max() + 1
    vols = np.concatenate([base.volume_ids + t * per_tile for t in range(n_tiles)])
    index = HashIndex.build(base.codebook_normal, base.codebook_abnormal, faiss_indexes=False)
    index.add(gn, ga, vols)
    return index, base


def _p50(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def _breakdown(index, qn, qa, distance: str, runs: int = 20) -> dict:
    """Median milliseconds of each step of one S_sum query on the torch engine."""
    import torch

    scan = index._torchscan()
    q_reps, q_sq = index._prepare(qn[:1], qa[:1])
    ids = np.arange(1)
    steps: dict = {}

    @contextlib.contextmanager
    def timed(name):
        torch.cuda.synchronize()
        t = time.perf_counter()
        yield
        torch.cuda.synchronize()
        steps.setdefault(name, []).append((time.perf_counter() - t) * 1e3)

    for _ in range(runs):
        with timed("inputs"):
            tables, books = scan._inputs(q_reps, q_sq, ids, "sum", distance, False)
        excluded = torch.full((1,), -1, dtype=torch.int32, device=scan.device)
        with timed("bounds"):
            lo, upper = scan._volume_race(books, distance, excluded)
        with timed("select"):
            theta = torch.topk(upper, 10, dim=1, largest=False).values[:, -1:]
            pairs = torch.nonzero(lo <= theta).T.contiguous()
        with timed("exact"):
            scan._exact_distances(books, tables, pairs, q_sq, ids, distance, False)
        steps.setdefault("candidates", []).append(pairs.shape[1])
    return {name: float(np.median(v)) for name, v in steps.items()}


def phase_engine(n_tiles: int, tile: int, exact_queries: int, modes=MODES) -> dict:
    import hashindex.torch_engine as torch_engine

    t = time.perf_counter()
    index, base = _engine_index(n_tiles, tile)
    out: dict = {"rows": index.ntotal, "volumes": int(index._vol_unique.size),
                 "make_s": time.perf_counter() - t}  # fmt: skip
    qn, qa = base.query_normal, base.query_abnormal  # 64 new patients
    exclude = np.full(qn.shape[0], -1, np.int64)
    for kernel in ("triton", "torch"):
        os.environ[torch_engine.KERNEL_ENV] = kernel
        index._engines.pop("torch", None)  # a fresh TorchScan with this kernel
        t = time.perf_counter()
        scan = index._torchscan()
        res: dict = {
            "kernel": scan.kernel,
            "upload_s": time.perf_counter() - t,
            "mismatches": [],
            "checked": 0,
        }
        for mode in modes:
            for distance in DISTANCES:
                kw = dict(mode=mode, distance=distance, exclude_volumes=exclude[:exact_queries])
                got = index.search_volumes(qn[:exact_queries], qa[:exact_queries], 10,
                                           engine="torch", **kw)  # fmt: skip
                ref = index.search_volumes(qn[:exact_queries], qa[:exact_queries], 10,
                                           engine="lut", **kw)  # fmt: skip
                res["checked"] += exact_queries
                if not all(np.array_equal(a, b) for a, b in zip(got, ref, strict=True)):
                    res["mismatches"].append(f"{mode}/{distance}")
        for distance in DISTANCES:
            one = [0]

            def single(distance=distance, one=one):
                i = one[0] % qn.shape[0]
                one[0] += 1
                index.search_volumes(qn[i : i + 1], qa[i : i + 1], 10, mode="sum",
                                     distance=distance, engine="torch")  # fmt: skip

            single()  # tunes the kernel for this shape
            res[f"sum_{distance}_single_p50_ms"] = _p50(single, 30)

            def batch(distance=distance):
                index.search_volumes(qn, qa, 10, mode="sum", distance=distance, engine="torch")

            batch()
            ms = _p50(batch, 5)
            res[f"sum_{distance}_batch64_queries_per_s"] = qn.shape[0] / (ms / 1e3)
        res["normal_hamming_single_p50_ms"] = _p50(
            lambda: index.search_volumes(qn[:1], qa[:1], 10, mode="normal", engine="torch"), 30
        )
        if kernel == "triton":
            try:
                res["sum_breakdown_ms"] = {d: _breakdown(index, qn, qa, d) for d in DISTANCES}
            except Exception as exc:  # a view into the engine's steps, not a result to lose
                res["sum_breakdown_ms"] = repr(exc)
        out[kernel] = res
        if n_tiles > 1:
            break  # 10M: the Triton kernel only (the torch gathers are the fallback)
    lut_ms = _p50(lambda: index.search_volumes(qn[:1], qa[:1], 10, mode="sum", engine="lut"), 5)
    out["lut_sum_hamming_single_p50_ms"] = lut_ms
    return out


def _markdown(report: dict) -> str:
    lines = [
        "# GPU check",
        "",
        "```json",
        json.dumps(report.get("machine", {}), indent=1),
        "```",
        "",
    ]
    for name in ("train", "encode", "engine_1M", "engine_10M"):
        lines += [f"## {name}", "", "```json", json.dumps(report.get(name), indent=1), "```", ""]
    return "\n".join(lines)


def _write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(_markdown(report))


def _run(report: dict, out: Path, name: str, fn) -> None:
    t = time.perf_counter()
    print(f"[gpu_check] {name} ...", flush=True)
    try:
        report[name] = fn()
    except Exception as exc:  # a failing phase is a finding; the next phase still runs
        report[name] = {"error": repr(exc), "traceback": traceback.format_exc()[-3000:]}
    report[name]["wall_s"] = round(time.perf_counter() - t, 1)
    print(f"[gpu_check] {name}: {json.dumps(report[name])[:1500]}", flush=True)
    _write(report, out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu-h200"),
                        help="folder for report.json and report.md")  # fmt: skip
    parser.add_argument("--skip", action="append", default=[], help="phase names to skip")
    parser.add_argument("--tile", type=int, default=1_000_000,
                        help="slices of the small engine workload (the large one is 10 tiles)")  # fmt: skip
    args = parser.parse_args(argv)
    report: dict = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    _write(report, args.out)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        phases = {
            "train": lambda: phase_train(work),
            "encode": lambda: phase_encode(work),
            "engine_1M": lambda: phase_engine(1, args.tile, exact_queries=8),
            "engine_10M": lambda: phase_engine(10, args.tile, exact_queries=2, modes=("sum",)),
        }
        for name, fn in phases.items():
            if name not in args.skip:
                _run(report, args.out, name, fn)


if __name__ == "__main__":
    main()
