"""The quality benchmark's scores: the mean Dice of every hit list, the table rows against the
oracle, the decomposition check, issue #13's targets and the abnormal codes' use of healthy
tissue."""

from __future__ import annotations

import numpy as np

from benchmarks.quality.labels import (
    BASELINES,
    DISTANCES,
    DRAWN,
    METRIC_OF_MODE,
    METRICS,
    MODES,
    ORACLE_OF_MODE,
)

# Issue #13's targets: share of the oracle per mode, S_normal's lift over the same-level
# baseline as a share of the gap to the oracle, and at most this many abnormal codes on the
# healthy slices of the test archive.
TARGET_RATIO = {"normal": 0.88, "abnormal": 0.80}
LIFT_TARGET = 0.40
HEALTHY_CODES_TARGET = 3
PAPER_RATIO = {"normal": 0.50 / 0.62, "abnormal": 0.28 / 0.37}


def score_hits(
    hits: list[np.ndarray], dice_normal: np.ndarray, dice_lesion: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-query mean Dice of the hits: {"normal", "lesion", "sum"} -> (B,) float64."""
    normal = np.array([dice_normal[i, r].mean() if r.size else np.nan for i, r in enumerate(hits)])
    lesion = np.array([dice_lesion[i, r].mean() if r.size else np.nan for i, r in enumerate(hits)])
    return {"normal": normal, "lesion": lesion, "sum": (normal + lesion) / 2}


def score_methods(methods: dict, dice_normal: np.ndarray, dice_lesion: np.ndarray) -> dict:
    """{method: {metric: {"mean", "std", "per_query"}}}; DRAWN methods average their draws
    per query."""
    out = {}
    for name, hits in methods.items():
        if name in DRAWN:
            draws = [score_hits(h, dice_normal, dice_lesion) for h in hits]
            per_query = {m: np.mean([d[m] for d in draws], axis=0) for m in METRICS}
        else:
            per_query = score_hits(hits, dice_normal, dice_lesion)
        out[name] = {
            m: {"mean": float(np.mean(v)), "std": float(np.std(v)), "per_query": v.tolist()}
            for m, v in per_query.items()
        }
    return out


def summarise(scores: dict) -> dict:
    """Table rows (mode × distance → own-metric Dice, oracle, ratio), cross-scores, targets."""
    from scipy.stats import wilcoxon

    rows = []
    for mode in MODES:
        metric = METRIC_OF_MODE[mode]
        oracle = scores[ORACLE_OF_MODE[mode]][metric]["mean"]
        for dist in DISTANCES:
            s = scores[f"{mode}/{dist}"]
            rows.append(
                {
                    "mode": mode,
                    "distance": dist,
                    "metric": metric,
                    "normal": s["normal"]["mean"],
                    "lesion": s["lesion"]["mean"],
                    "sum": s["sum"]["mean"],
                    "own": s[metric]["mean"],
                    "own_std": s[metric]["std"],
                    "oracle": oracle,
                    "ratio": s[metric]["mean"] / oracle if oracle else None,
                }
            )
    baselines = {}
    for name in (*BASELINES, "oracle/normal", "oracle/abnormal", "oracle/sum"):
        baselines[name] = {m: scores[name][m]["mean"] for m in METRICS}
        baselines[name].update({f"{m}_std": scores[name][m]["std"] for m in METRICS})
    decomposition = {}
    for dist in DISTANCES:
        n_hits, a_hits = scores[f"normal/{dist}"], scores[f"abnormal/{dist}"]
        dn = np.array(n_hits["normal"]["per_query"]) - np.array(a_hits["normal"]["per_query"])
        dl = np.array(a_hits["lesion"]["per_query"]) - np.array(n_hits["lesion"]["per_query"])

        def p_value(d):
            d = d[np.isfinite(d)]
            if d.size < 2 or not np.any(d):
                return None
            return float(wilcoxon(d).pvalue)

        decomposition[dist] = {
            "normal_dice_of_S_normal": n_hits["normal"]["mean"],
            "normal_dice_of_S_abnormal": a_hits["normal"]["mean"],
            "lesion_dice_of_S_abnormal": a_hits["lesion"]["mean"],
            "lesion_dice_of_S_normal": n_hits["lesion"]["mean"],
            "S_normal_wins_normal": bool(dn.mean() > 0),
            "S_abnormal_wins_lesion": bool(dl.mean() > 0),
            "holds": bool(dn.mean() > 0 and dl.mean() > 0),
            "p_normal": p_value(dn),
            "p_lesion": p_value(dl),
        }
    targets = {}
    for mode in ("normal", "abnormal"):
        ratios = {r["distance"]: r["ratio"] for r in rows if r["mode"] == mode}
        targets[mode] = {
            "target": TARGET_RATIO[mode],
            "paper": PAPER_RATIO[mode],
            "ratios": ratios,
            "met": {d: (r is not None and r >= TARGET_RATIO[mode]) for d, r in ratios.items()},
        }
    # S_normal's lift over the same-level baseline, as a share of that baseline's gap to the
    # oracle: 0 = no better than picking the same level in random volumes, 1 = the oracle.
    level = scores["same-level"]["normal"]["mean"]
    oracle = scores["oracle/normal"]["normal"]["mean"]
    lift = {
        d: (scores[f"normal/{d}"]["normal"]["mean"] - level) / (oracle - level)
        if oracle > level
        else None
        for d in DISTANCES
    }
    targets["normal_lift"] = {
        "target": LIFT_TARGET,
        "same_level": level,
        "oracle": oracle,
        "lift": lift,
        "met": {d: (v is not None and v >= LIFT_TARGET) for d, v in lift.items()},
    }
    return {
        "rows": rows,
        "baselines": baselines,
        "decomposition": decomposition,
        "targets": targets,
    }


def abnormal_code_usage(index, lesion: np.ndarray, brain_rows: np.ndarray) -> dict:
    """How the abnormal codes cover healthy tissue and lesions, from the index's code grids.

    lesion: (N, S, S) class labels per row; brain_rows: rows with brain. Healthy rows are brain
    rows without any lesion label. The null code is the commonest abnormal code of the healthy
    rows; a lesion cell is a grid cell holding a lesion pixel, and it is *flagged* when its
    abnormal code differs from the null code.
    """
    codes = np.asarray(index.codes_abnormal)
    n, h, w = codes.shape
    side = lesion.shape[-1]
    f = side // h
    cells = lesion.reshape(n, h, f, w, f).max(axis=(2, 4)) > 0  # (N, h, w) cells with lesion
    has_lesion = cells.reshape(n, -1).any(1)
    healthy = np.zeros(n, bool)
    healthy[brain_rows] = True
    healthy &= ~has_lesion
    healthy_codes = codes[healthy].ravel()
    values, counts = np.unique(healthy_codes, return_counts=True)
    null = int(values[np.argmax(counts)]) if values.size else None
    in_lesion = codes[cells]
    outside = codes[healthy[:, None, None] | (~cells & has_lesion[:, None, None])]
    return {
        "healthy_slices": int(healthy.sum()),
        "healthy_distinct_codes": int(values.size),
        "healthy_null_share": float(counts.max() / counts.sum()) if counts.size else None,
        "null_code": null,
        "lesion_cells": int(cells.sum()),
        "lesion_cells_flagged": float(np.mean(in_lesion != null)) if in_lesion.size else None,
        "non_lesion_cells_flagged": float(np.mean(outside != null)) if outside.size else None,
        "target_distinct_codes": HEALTHY_CODES_TARGET,
        "met": bool(values.size <= HEALTHY_CODES_TARGET),
    }
