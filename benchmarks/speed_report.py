"""The speed benchmark's report: targets met or missed, markdown tables, figures, results.json."""

from __future__ import annotations

from pathlib import Path

from benchmarks import report as rp
from benchmarks.speed_figures import ENGINE_STYLE, ivf_figure, latency_figure
from benchmarks.speed_measure import DISTANCES, MODES, RAW_K, select_rows


def evaluate_targets(results: dict) -> list[dict]:
    """The three targets of the speed suite: measured value, met or missed, by how much."""
    tg = results["config"]["targets"]
    sizes = sorted({r["n"] for r in results["rows"]})
    out = []

    # 1. Exact volume-wise top-10 for S_sum over 1M slices in <= 30 ms per single query.
    t1 = {
        "target": f"exact volume-wise top-10, S_sum, 1M slices, single query <= "
        f"{tg['sum_1m_ms']:g} ms (p50)"
    }
    cand = select_rows(results, n=1_000_000, mode="sum")
    exact = [r for r in cand if r["engine"] in ("lut", "fastscan", "faiss-binary-flat", "numpy")]
    if not exact:
        t1.update(met=None, measured="not measured: no N = 1,000,000 in this run")
    else:
        best = min(exact, key=lambda r: r["p50_ms"])
        t1.update(
            met=best["p50_ms"] <= tg["sum_1m_ms"],
            value_ms=best["p50_ms"],
            measured=f"{best['engine']} {best['distance']}: p50 {best['p50_ms']:.1f} ms, "
            f"p95 {best['p95_ms']:.1f} ms; "
            + ", ".join(f"{r['engine']} {r['distance']} {r['p50_ms']:.1f} ms" for r in exact),
            ratio=best["p50_ms"] / tg["sum_1m_ms"],
        )
    out.append(t1)

    # 2. At 100k: >= 20x faster than IndexFlatL2 on decoded floats (same metric D_E).
    t2 = {
        "target": f"N = 100,000: LUT engine >= {tg['speedup_vs_float_l2_100k']:g}x faster "
        "than FAISS IndexFlatL2 on decoded floats (single-query p50, each mode)"
    }
    pairs = []
    for mode in MODES:
        lut = select_rows(results, n=100_000, mode=mode, engine="lut", distance="euclidean")
        fl = select_rows(results, n=100_000, mode=mode, engine="faiss-float-l2")
        if lut and fl:
            pairs.append(
                (
                    mode,
                    fl[0]["p50_ms"] / lut[0]["p50_ms"],
                    lut[0]["throughput_qps"] / fl[0]["throughput_qps"],
                    fl[0]["raw_knn_p50_ms"] / lut[0]["p50_ms"],
                )
            )
    if not pairs:
        t2.update(met=None, measured="not measured: no N = 100,000 with floats in this run")
    else:
        t2.update(
            met=all(p[1] >= tg["speedup_vs_float_l2_100k"] for p in pairs),
            speedups={p[0]: p[1] for p in pairs},
            measured="; ".join(
                f"{m}: {s:.1f}x single-query ({r:.1f}x against a single "
                f"k={RAW_K} float scan), {b:.1f}x batched throughput"
                for m, s, b, r in pairs
            ),
        )
    out.append(t2)

    # 3. IVF recall@10 >= 0.95 at >= 5x the speed of flat binary (per N and mode).
    for n in sizes:
        t3 = {
            "target": f"N = {n:,}: IndexBinaryIVF recall@10 >= {tg['ivf_recall']:g} at >= "
            f"{tg['ivf_speedup']:g}x the single-query speed of IndexBinaryFlat"
        }
        per_mode = {}
        for mode in MODES:
            ivf = select_rows(results, n=n, mode=mode, engine="faiss-binary-ivf")
            ok = [r for r in ivf if r["recall_at_10"] >= tg["ivf_recall"]]
            best = max(ok, key=lambda r: r["speedup_vs_flat"]) if ok else None
            top = max(ivf, key=lambda r: r["recall_at_10"]) if ivf else None
            per_mode[mode] = {
                "best_speedup_at_recall": best["speedup_vs_flat"] if best else None,
                "nprobe": best["nprobe"] if best else None,
                "max_recall": top["recall_at_10"] if top else None,
            }
        if not any(select_rows(results, n=n, engine="faiss-binary-ivf")):
            continue
        t3["met"] = all(
            (v["best_speedup_at_recall"] or 0) >= tg["ivf_speedup"] for v in per_mode.values()
        )
        t3["per_mode"] = per_mode
        t3["measured"] = "; ".join(
            f"{m}: "
            + (
                f"{v['best_speedup_at_recall']:.1f}x at nprobe={v['nprobe']}"
                if v["best_speedup_at_recall"] is not None
                else f"recall never >= {tg['ivf_recall']:g} (max {v['max_recall']:.3f})"
            )
            for m, v in per_mode.items()
        )
        out.append(t3)
    return out


# ---------------------------------------------------------------------------- report


def _main_table(results: dict, mode: str) -> str:
    headers = [
        "engine",
        "distance",
        "nprobe",
        "N",
        "p50 ms",
        "p95 ms",
        "1 k-NN ms",
        "queries/s (batch)",
        "build s",
        "RAM B/slice",
        "disk B/slice",
        "recall@10",
        "floor ms",
        "device",
    ]
    order = list(ENGINE_STYLE)
    rows = sorted(
        select_rows(results, mode=mode),
        key=lambda r: (
            order.index(r["engine"]),
            DISTANCES.index(r["distance"]),
            r.get("nprobe") or 0,
            r["n"],
        ),
    )
    body = [
        [
            r["engine"],
            r["distance"],
            r.get("nprobe"),
            r["n"],
            r["p50_ms"],
            r["p95_ms"],
            r.get("raw_knn_p50_ms"),
            f"{rp.fmt(r['throughput_qps'])} ({r['batch']})",
            r["build_s"],
            r["ram_bytes_per_slice"],
            r["disk_bytes_per_slice"],
            r["recall_at_10"],
            r["floor_ms"],
            r["device"],
        ]
        for r in rows
    ]
    return rp.markdown_table(headers, body)


def render_markdown(results: dict) -> str:
    cfg, bw, wk = results["config"], results["bandwidth"], results["workload"]
    L = [
        f"# Search speed and memory: {cfg['name']}\n",
        "Exact and approximate volume-wise top-10 (paper 4.4.6) of one query slice over "
        "archives of N slices, every engine in the same run on the same data "
        "(`python -m benchmarks.speed`).\n",
        "## Machine\n",
        rp.machine_markdown(results["machine"]),
        f"- Memory read bandwidth measured in this run: {bw['read_gbps']:.1f} GB/s "
        f"({bw['threads']} threads summing {bw['bytes'] / 2**30:.2f} GiB; one thread "
        f"{bw['read_1thread_gbps']:.1f} GB/s; copy {bw['copy_gbps']:.1f} GB/s).\n",
        f"- Device of every figure: {results['device']} (no GPU FAISS run here: "
        + ("a GPU was visible)" if results["device"] == "gpu" else "FAISS sees no GPU)")
        + f". Whole run: {results['wall_s'] / 60:.1f} min, peak RSS "
        f"{results['peak_rss_bytes'] / 2**30:.1f} GiB, 1-minute load average at the end "
        f"{results['load_average_1m_end']:.1f}; this process used {results['cpu_share']:.0%} "
        "of the cores over the run"
        + (
            " — other jobs shared the machine, so every time here is pessimistic and the "
            "measured bandwidth is what was left to this run"
            if max(results["machine"]["load_average_1m"], results["load_average_1m_end"])
            > results["machine"]["cores"]
            else ""
        )
        + ".\n",
        "\n## Workload\n",
        f"- {wk['source']}\n- grid {wk['grid'][0]}×{wk['grid'][1]}, K = {wk['K']}, D = "
        f"{wk['D']}, live codes {wk['live_normal']} (normal) / {wk['live_abnormal']} "
        f"(abnormal), {wk['slices_per_volume']} slices per volume; {cfg['queries']} queries "
        f"(the largest-lesion slice of new diseased volumes), batch {cfg['batch']}.\n",
    ]
    binz = results["binarization"]
    P = wk["grid"][0] * wk["grid"][1]
    L.append(
        f"- Bit tables optimized once per codebook ({binz['optimize_s']:.1f} s for both, "
        f"Algorithm A.1 then a bit budget of {cfg['bit_budget']} bits per position):\n"
    )
    for book, r in binz["report"].items():
        c = r["concordance"]["b_star_live"]
        L.append(
            f"  - {book}: E = {r['E']:,}, E* (A.1) = {r['E_star_faithful']:,}, kept "
            f"{r['E_star']} bits; top-1/5/10 concordance with Euclidean over live codes "
            f"{c['top1']:.2f}/{c['top5']:.2f}/{c['top10']:.2f}; {r['seconds']:.1f} s\n"
        )
    L.append(
        "- IVF: nlist = "
        + ", ".join(f"{v['nlist']} (N={int(k):,})" for k, v in results["builds"].items())
        + f", nprobe ∈ {list(cfg['nprobes'])}. nlist stays far below the usual ~4·√N "
        "because IndexBinaryIVF trains k-means on the bits expanded to floats "
        f"(256·nlist points × d floats, d = {P * cfg['bit_budget']:,}–"
        f"{2 * P * cfg['bit_budget']:,} here; the cost grows with nlist²): "
        "in a trial on this machine (loaded, before OMP_WAIT_POLICY=PASSIVE) nlist = 256 "
        "took 260 s to train the three modes at 100k. Float engines: IndexFlatL2 on the decoded "
        "grids (both grids concatenated for S_sum: then the metric is "
        "sqrt(D_E,n² + D_E,a²), not eq. 17's plain sum) and IndexFlatIP on the "
        "L2-normalised vectors (cosine, i.e. D_A).\n"
    )
    L.append(
        f"- Each grid is {P} positions × D floats for the float engines "
        f"({P * wk['D']:,} floats per slice, twice that for S_sum).\n"
    )

    L.append("\n## Targets\n")
    for t in results["targets"]:
        if t["met"] is None:
            L.append(f"- {t['target']}: {t['measured']}.\n")
            continue
        status = "**met**" if t["met"] else "**missed**"
        L.append(f"- {t['target']}: {status}. {t['measured']}.\n")
    L.append(_target_notes(results))

    L.append("\n## Results per mode\n")
    L.append(
        "p50/p95: single-query latency (warm, one query per call); 1 k-NN ms: one raw "
        f"FAISS k-NN call (k = {RAW_K}, p50), i.e. the scan without the extra rounds that "
        "growing k to 10 distinct volumes costs; queries/s: one call "
        "with a batch; build s: LUT = storing the grids, binary flat = packing + "
        "IndexBinaryFlat for all three modes, IVF = training + adding for all three "
        "modes, float = decoding + IndexFlat; floor: bytes one scan reads ÷ measured "
        "bandwidth (IVF: the nprobe/nlist share).\n"
    )
    for mode in MODES:
        L.append(f"\n### S_{mode}\n\n" + _main_table(results, mode))

    L.append(
        "\n## FAISS `hamming_batch_size`\n\nRaw IndexBinaryFlat k-NN (k = "
        f"{RAW_K}) for each value; hashindex picks max(256, min(65536, 8 MiB / code "
        "size)) itself.\n\n"
    )
    hdr = ["N", "mode", "code bytes"] + [
        f"{v['hamming_batch_size']:,}: 1q ms / batch q/s"
        for v in results["hamming_batch_tuning"][0]["values"]
    ]
    body = (
        [
            [t["n"], t["mode"], t["code_size"]]
            + [f"{v['single_p50_ms']:.2f} / {v['batch_qps']:.0f}" for v in t["values"]]
            for t in results["hamming_batch_tuning"]
        ]
        if results["hamming_batch_tuning"]
        else []
    )
    if body:
        L.append(rp.markdown_table(hdr, body))
        best = ", ".join(
            f"N={t['n']:,} {t['mode']}: {t['best_single']:,} (single), {t['best_batch']:,} (batch)"
            for t in results["hamming_batch_tuning"]
        )
        L.append(f"\nBest values: {best}.\n")

    L.append("\n## Exact engines agree\n\n")
    L.append(
        rp.markdown_table(
            ["check", "max |Δ distance|", "tolerance (rel.)", "ok"],
            [
                [a["check"], a["max_abs_diff"], a["rtol"], str(a["ok"])]
                for a in results["agreement"]
            ],
        )
    )
    if results["skipped"]:
        L.append("\n## Left out\n\n" + "".join(f"- {s}\n" for s in results["skipped"]))
    L.append(
        "\n## Figures\n\n![latency against N](latency_vs_n.png)\n\n"
        "![IVF recall against speed](ivf_recall_speed.png)\n"
    )
    return "".join(L)


def _target_notes(results: dict) -> str:
    """Why a target is missed, from the LUT breakdown and the floors measured in the run."""
    notes = []
    b = results.get("lut_breakdown") or {}
    t1 = results["targets"][0]
    if t1["met"] is False and b:
        floor = select_rows(results, n=b["n"], mode="sum", engine="lut", distance="hamming")
        fl = floor[0]["floor_ms"] if floor else float("nan")
        notes.append(
            f"  - Why target 1 is missed (LUT, D_H, N = {b['n']:,}): the two table scans take "
            f"{b['scan_ms']:.1f} ms, turning sums into distances and adding them "
            f"{b['finish_ms']:.1f} ms, the volume-wise selection {b['volumes_ms']:.1f} ms. The "
            f"scans read only {fl:.1f} ms worth of memory at the measured bandwidth; they are "
            f"bound by {b['lookups'] / 1e6:.0f} M dependent table gathers "
            f"({b['ns_per_lookup_per_core']:.2f} ns per gather per core), not by bandwidth. "
            f"Missed by {t1['ratio']:.1f}x.\n"
        )
    for t in results["targets"][2:]:
        if t["met"] is not False:
            continue
        n = int(t["target"].split("N = ")[1].split(":")[0].replace(",", ""))
        parts = []
        for mode, v in t["per_mode"].items():
            if v["nprobe"] is None:
                parts.append(f"S_{mode} never reaches the recall")
                continue
            nlist = select_rows(results, n=n, mode=mode, engine="faiss-binary-ivf")[0]["nlist"]
            parts.append(
                f"S_{mode} needs nprobe = {v['nprobe']} of {nlist} lists "
                f"({v['nprobe'] / nlist:.0%} of the archive)"
            )
        notes.append(
            f"  - Why the IVF target is missed at N = {n:,}: for recall@10 >= 0.95 "
            + "; ".join(parts)
            + ". With an eighth to a quarter of the archive scanned, the "
            "gain over IndexBinaryFlat is left to what the flat scan loses to its grow-k "
            "rounds; a larger nlist would shrink the share, but IndexBinaryIVF's k-means on "
            "bits expanded to floats costs ∝ nlist² to train.\n"
        )
    return "".join(notes)


def write_report(results: dict, out_dir: Path) -> Path:
    """Write report.md, results.json and the figures into ``out_dir``; returns the directory."""
    out = rp.results_dir(out_dir)
    latency_figure(results, out / "latency_vs_n.png")
    ivf_figure(results, out / "ivf_recall_speed.png")
    rp.write_json(out / "results.json", results)
    rp.write_text(out / "report.md", render_markdown(results))
    return out


# ---------------------------------------------------------------------------- CLI
