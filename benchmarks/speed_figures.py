"""Figures of the speed benchmark: latency against N per engine and distance, IVF recall/speed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks import report as rp
from benchmarks.speed_measure import DISTANCES, MODES, TOPQ, select_rows

ENGINE_STYLE = {  # (colour, marker) per engine in the figure
    "lut": ("tab:blue", "o"),
    "fastscan": ("tab:purple", "P"),
    "numpy": ("tab:gray", "x"),
    "faiss-binary-flat": ("tab:red", "s"),
    "faiss-binary-ivf": ("tab:orange", "v"),
    "faiss-float-l2": ("tab:green", "^"),
    "faiss-float-ip": ("tab:olive", "D"),
}
DIST_STYLE = {"hamming": "-", "euclidean": "--", "angular": ":"}


def _label(r: dict) -> str:
    s = f"{r['engine']} ({r['distance']}"
    return s + (f", nprobe={r['nprobe']})" if r.get("nprobe") is not None else ")")


def latency_figure(results: dict, path: Path) -> None:
    """Single-query p50 latency against N per engine (log-log), one panel per mode, with the
    bandwidth floor (bytes one scan reads ÷ measured bandwidth) of each scan drawn dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 6), sharey=True)
    gb = results["bandwidth"]["read_gbps"]
    for ax, mode in zip(axes, MODES, strict=True):
        rows = select_rows(results, mode=mode)
        series: dict[str, list] = {}
        for r in rows:
            series.setdefault(_label(r), []).append(r)
        order = list(ENGINE_STYLE)
        for _, rs in sorted(
            series.items(),
            key=lambda kv: (
                order.index(kv[1][0]["engine"]),
                DISTANCES.index(kv[1][0]["distance"]),
                kv[1][0].get("nprobe") or 0,
            ),
        ):
            rs = sorted(rs, key=lambda r: r["n"])
            label = _label(rs[0])
            colour, marker = ENGINE_STYLE.get(rs[0]["engine"], ("black", "."))
            ivf = rs[0]["engine"] == "faiss-binary-ivf"
            ax.plot(
                [r["n"] for r in rs],
                [r["p50_ms"] for r in rs],
                marker=marker,
                color=colour,
                linestyle=DIST_STYLE.get(rs[0]["distance"], "-"),
                alpha=0.45 if ivf else 1,
                linewidth=1 if ivf else 2,
                label=label,
            )
        for engine, name in (
            ("lut", "floor: LUT grids"),
            ("faiss-binary-flat", "floor: packed bits"),
            ("faiss-float-l2", "floor: float vectors"),
        ):
            rs = sorted(
                {r["n"]: r for r in rows if r["engine"] == engine}.values(), key=lambda r: r["n"]
            )
            if rs:
                ax.plot(
                    [r["n"] for r in rs],
                    [r["floor_ms"] for r in rs],
                    color=ENGINE_STYLE[engine][0],
                    linestyle=(0, (2, 2)),
                    linewidth=1.2,
                    label=f"{name} @ {gb:.0f} GB/s",
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"S_{mode}: exact volume-wise top-{TOPQ}, one query")
        ax.set_xlabel("archive size N (slices)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency p50 (ms)")
    handles, labels = axes[2].get_legend_handles_labels()
    for ax in axes[:2]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=4,
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, -0.16),
    )
    m = results["machine"]
    fig.suptitle(
        f"Search latency against N — {m['cpu']}, {m['cores']} cores, device: "
        f"{results['device']}; dashed thin lines: bandwidth floors"
    )
    rp.save_figure(fig, path)


def ivf_figure(results: dict, path: Path) -> None:
    """IVF recall@10 against speed-up over IndexBinaryFlat, per N and mode, nprobe annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = {"normal": "o", "abnormal": "s", "sum": "^"}
    sizes = sorted({r["n"] for r in results["rows"]})
    colours = plt.cm.viridis(np.linspace(0, 0.85, max(len(sizes), 1)))
    for n, colour in zip(sizes, colours, strict=True):
        for mode in MODES:
            rs = sorted(
                select_rows(results, n=n, mode=mode, engine="faiss-binary-ivf"),
                key=lambda r: r["nprobe"],
            )
            if not rs:
                continue
            x = [r["speedup_vs_flat"] for r in rs]
            y = [r["recall_at_10"] for r in rs]
            ax.plot(x, y, marker=markers[mode], color=colour, label=f"N={n:,} S_{mode}")
            for r in rs:
                ax.annotate(
                    str(r["nprobe"]),
                    (r["speedup_vs_flat"], r["recall_at_10"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    tg = results["config"]["targets"]
    ax.axhline(tg["ivf_recall"], color="k", linestyle=":", linewidth=1)
    ax.axvline(tg["ivf_speedup"], color="k", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("single-query speed-up over IndexBinaryFlat (p50 ratio)")
    ax.set_ylabel(f"volume-wise recall@{TOPQ} (tie-aware)")
    ax.set_title("IndexBinaryIVF: recall against speed (labels: nprobe); target: upper right")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    rp.save_figure(fig, path)
