"""Figures of the quality report: Dice per mode and distance beside the oracle and baselines,
and the cross-scores (normal vs lesion Dice of every method's hits)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks import report as rp
from benchmarks.quality.labels import BASELINES

BARS = (
    ("euclidean", "D_E", "tab:blue"),
    ("angular", "D_A", "tab:cyan"),
    ("hamming", "D_H", "tab:purple"),
    ("raw-pixel", "raw pixels", "tab:olive"),
    ("model-seg", "model's ŷ Dice", "tab:pink"),
    ("grid-truth", "truth on the grid", "tab:orange"),
    ("random", "random", "tab:gray"),
    ("same-level", "same level", "tab:brown"),
    ("oracle", "Dice oracle", "tab:red"),
)
GROUPS = (
    ("normal", "S_normal\nnormal Dice"),
    ("abnormal", "S_abnormal\nlesion Dice"),
    ("sum", "S_sum\nmean of both"),
    ("sum-normalized", "S_sum normalised\nmean of both"),
)
METRIC = {"normal": "normal", "abnormal": "lesion", "sum": "sum", "sum-normalized": "sum"}
ORACLE = {
    "normal": "oracle/normal",
    "abnormal": "oracle/abnormal",
    "sum": "oracle/sum",
    "sum-normalized": "oracle/sum",
}


def _method(bar: str, mode: str) -> str:
    if bar in BASELINES:
        return bar
    if bar == "oracle":
        return ORACLE[mode]
    return f"{mode}/{bar}"


def dice_bars(results: dict, path: Path) -> None:
    """Grouped bars: for each mode its own Dice under every distance, baselines and oracle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = results["scores"]
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / len(BARS)
    x = np.arange(len(GROUPS))
    for b, (bar, label, color) in enumerate(BARS):
        means, stds = [], []
        for mode, _ in GROUPS:
            s = scores[_method(bar, mode)][METRIC[mode]]
            means.append(s["mean"])
            stds.append(s["std"])
        pos = x - 0.4 + width * (b + 0.5)
        ax.bar(
            pos,
            means,
            width,
            yerr=stds,
            color=color,
            label=label,
            error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "0.3"},
        )
    targets = results["summary"]["targets"]
    for g, (mode, _) in enumerate(GROUPS):
        if mode not in targets:  # the targets cover S_normal and S_abnormal
            continue
        share = targets[mode]["target"]
        ax.hlines(
            share * scores[ORACLE[mode]][METRIC[mode]]["mean"],
            x[g] - 0.42,
            x[g] + 0.42,
            colors="k",
            linestyles="dashed",
            linewidth=0.9,
            label="target share of the oracle" if g == 0 else None,
        )
    ax.set_xticks(x, [label for _, label in GROUPS])
    ax.set_ylabel("mean Dice of the top-10 volumes")
    ax.set_ylim(0, 1.05)
    ta = results["test_archive"]
    ax.set_title(
        f"Retrieval quality: {len(results['queries'])} queries, {ta['slices']} slices "
        f"of {ta['cases']} test volumes (mean ± std over queries)"
    )
    ax.legend(ncol=4, fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    rp.save_figure(fig, path)


def cross_scores(results: dict, path: Path) -> None:
    """Normal Dice (x) vs lesion Dice (y) of the hits of every method: decomposition at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = results["scores"]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    markers = {"euclidean": "o", "angular": "s", "hamming": "^"}
    colors = {
        "normal": "tab:blue",
        "abnormal": "tab:red",
        "sum": "tab:green",
        "sum-normalized": "tab:olive",
    }
    for mode, color in colors.items():
        for dist, marker in markers.items():
            s = scores[f"{mode}/{dist}"]
            ax.scatter(
                s["normal"]["mean"],
                s["lesion"]["mean"],
                c=color,
                marker=marker,
                s=40,
                label=f"{mode} {dist}",
            )
    for name, marker, color in (
        ("oracle/normal", "*", "tab:blue"),
        ("oracle/abnormal", "*", "tab:red"),
        ("oracle/sum", "*", "tab:green"),
        ("random", "x", "0.4"),
        ("raw-pixel", "P", "k"),
    ):
        s = scores[name]
        ax.scatter(
            s["normal"]["mean"], s["lesion"]["mean"], c=color, marker=marker, s=110, label=name
        )
    ax.set_xlabel("normal Dice of the hits (6 anatomy labels)")
    ax.set_ylabel("lesion Dice of the hits (NET, ED, ET)")
    xs = [c.get_offsets()[:, 0].max() for c in ax.collections]
    ys = [c.get_offsets()[:, 1].max() for c in ax.collections]
    ax.set_xlim(0, min(1.0, 1.15 * max(xs)) or 1.0)
    ax.set_ylim(0, min(1.0, 1.15 * max(ys)) or 1.0)
    ax.grid(alpha=0.3)
    ax.set_title("Cross-scores: S_normal should sit right, S_abnormal high", fontsize=9)
    ax.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.02, 1))
    rp.save_figure(fig, path)


def write_figures(results: dict, out: Path) -> list[str]:
    """Write the report's figures into ``out``; returns their file names."""
    names = ["dice_by_mode.png", "cross_scores.png"]
    dice_bars(results, out / names[0])
    cross_scores(results, out / names[1])
    names += [m["histogram"] for m in results["model"]["models"].values()]
    return names
