"""The quality report's retrieval sections: the headline (targets and their gaps) and the table of
every mode and distance beside the oracle and the baselines."""

from __future__ import annotations

import numpy as np

from benchmarks import report as rp
from benchmarks.quality.labels import (
    BASELINES,
    DISTANCE_NAMES,
    METRIC_OF_MODE,
    MODE_NAMES,
    ORACLE_OF_MODE,
)
from benchmarks.quality.markdown_cells import cell, pm, table

DIST, MODE, METRIC, ORACLE = DISTANCE_NAMES, MODE_NAMES, METRIC_OF_MODE, ORACLE_OF_MODE


def retrieval_section(r: dict) -> str:
    scores, summary = r["scores"], r["summary"]
    modes = ("normal", "abnormal", "sum", "sum-normalized")
    headers = ["method"] + [f"{MODE[m]} ({METRIC[m]} Dice)" for m in modes]
    rows = []
    for dist, name in DIST.items():
        rows.append([name] + [cell(scores, f"{m}/{dist}", m) for m in modes])
    for method, label in (
        ("raw-pixel", "raw pixels (16×16×4, Euclidean)"),
        ("model-seg", "the model's ŷ, lesion Dice (the segmentation alone)"),
        ("grid-truth", "true lesion classes per code-grid cell, cosine (the grid's resolution)"),
        ("random", f"random ({r['config']['random_draws']} draws)"),
        ("same-level", f"same level, random volumes ({r['config']['random_draws']} draws)"),
    ):
        rows.append([label] + [cell(scores, method, m) for m in modes])
    rows.append(["**Dice oracle**"] + [cell(scores, ORACLE[m], m, with_ratio=False) for m in modes])
    text = (
        "## Retrieval quality (Table 2 protocol)\n\n"
        "Mean ± std over the queries of the mean Dice of the top-"
        f"{r['config']['topq']} volumes, each on the labels its mode is about; in brackets "
        "the ratio to the oracle of the same column. The paper (Table 2, BraTS, FDN 8×8 + "
        "DM): S_normal 0.50/0.48/0.47 (D_E/D_H/D_A) vs oracle 0.62; S_abnormal 0.28 vs "
        "0.37; S_sum 0.20–0.30 vs 0.42.\n\n"
    )
    text += table(headers, rows)
    areas = np.array([q["lesion_area"] for q in r["queries"]])
    side = r["index"]["input_size"]
    text += (
        f"\nQuery lesions cover {areas.min()}–{areas.max()} pixels (median "
        f"{np.median(areas):.0f}, {np.median(areas) / side**2:.1%} of the {side}² slice); "
        f"{r['test_archive']['diseased_cases'] - 1} of the {r['test_archive']['cases'] - 1} "
        "reference volumes of a query have a lesion, anywhere in the cerebrum. Lesion Dice "
        "needs the lesions to overlap in place, so it is low for every method, the oracle "
        "included. The model's ŷ row ranks by the lesion Dice between the segmentations the "
        "model decodes from the abnormal codes: what the segmentation alone gives S_abnormal, "
        "beside which the code distances show what they add or lose.\n"
    )
    text += "\n### Targets: shares of the oracle, and S_normal's lift over the same level\n\n"
    t_rows = []
    for mode in ("normal", "abnormal"):
        t = summary["targets"][mode]
        for dist, name in DIST.items():
            ratio = t["ratios"][dist]
            t_rows.append(
                [
                    MODE[mode],
                    name,
                    f"{ratio:.1%}",
                    f"{t['paper']:.0%}",
                    f"≥ {t['target']:.0%}: "
                    + ("**met**" if t["met"][dist] else f"**missed** (by {_gap(ratio, t)})"),
                ]
            )
    text += table(["mode", "distance", "ratio to oracle", "paper", "target"], t_rows)
    lift = summary["targets"]["normal_lift"]
    text += (
        f"\nS_normal's lift over the same-level baseline (random volumes, the slice at the "
        f"query's relative level: normal Dice {lift['same_level']:.3f}, oracle "
        f"{lift['oracle']:.3f}), as a share of the gap between them; target ≥ "
        f"{lift['target']:.0%}:\n\n"
    )
    text += table(
        ["distance", "lift", "target"],
        [
            [
                name,
                rp.fmt(lift["lift"][d], 3),
                "**met**" if lift["met"][d] else "**missed**",
            ]
            for d, name in DIST.items()
        ],
    )
    gaps = summary.get("hit_level_gap")  # absent from runs made before it was measured
    if gaps:
        text += (
            "\nAxial level of S_normal's hits: the mean gap between a hit's relative level "
            "(z / (Z − 1) in its volume) and the query's. Normal Dice is dominated by level, "
            "so a distance whose hits stray from the query's level has stopped comparing "
            "anatomy.\n\n"
        )
        text += table(
            ["method", "mean level gap"],
            [[name, rp.fmt(gaps[f"normal/{d}"], 3)] for d, name in DIST.items()]
            + [["Dice oracle", rp.fmt(gaps["oracle/normal"], 3)]],
        )
    text += "\n### All three Dice of every method (cross-scores included)\n\n"
    rows = []
    for mode in modes:
        for dist, name in DIST.items():
            s = scores[f"{mode}/{dist}"]
            rows.append([MODE[mode], name, pm(s["normal"]), pm(s["lesion"]), pm(s["sum"])])
    for method in ("oracle/normal", "oracle/abnormal", "oracle/sum", *BASELINES):
        s = scores[method]
        rows.append([method, "", pm(s["normal"]), pm(s["lesion"]), pm(s["sum"])])
    text += table(["mode", "distance", "normal Dice", "lesion Dice", "mean of both"], rows)
    text += (
        "\n### Decomposition\n\nDecomposition means that S_normal's hits win on normal "
        "Dice and S_abnormal's hits on lesion Dice (the cross-scores lose). p: two-sided "
        "Wilcoxon signed-rank test over the queries' paired differences.\n\n"
    )
    rows = []
    for dist, name in DIST.items():
        d = summary["decomposition"][dist]
        rows.append(
            [
                name,
                f"{d['normal_dice_of_S_normal']:.3f} vs {d['normal_dice_of_S_abnormal']:.3f} "
                f"(p {rp.fmt(d['p_normal'], 2)})",
                f"{d['lesion_dice_of_S_abnormal']:.3f} vs {d['lesion_dice_of_S_normal']:.3f} "
                f"(p {rp.fmt(d['p_lesion'], 2)})",
                "**holds**" if d["holds"] else "**does not hold**",
            ]
        )
    text += table(
        [
            "distance",
            "normal Dice: S_normal vs S_abnormal",
            "lesion Dice: S_abnormal vs S_normal",
            "decomposition",
        ],
        rows,
    )
    return text


def _gap(ratio: float, target: dict) -> str:
    """How far a ratio to the oracle falls short of its target, in percentage points."""
    return f"{(target['target'] - ratio) * 100:.1f} points"


def headline_section(r: dict) -> str:
    """The answers in a few lines, every number read from the results."""
    scores, summary = r["scores"], r["summary"]
    lines = ["## Headline\n"]
    for mode in ("normal", "abnormal"):
        t = summary["targets"][mode]
        oracle = scores[ORACLE[mode]][METRIC[mode]]["mean"]
        parts = ", ".join(
            f"{name} {scores[f'{mode}/{d}'][METRIC[mode]]['mean']:.3f} ({t['ratios'][d]:.0%})"
            for d, name in DIST.items()
        )
        met = [DIST[d] for d, ok in t["met"].items() if ok]
        verdict = (
            f"target met with {', '.join(met)}"
            if met
            else f"target missed with every distance (best {max(t['ratios'].values()):.0%})"
        )
        lines.append(
            f"- {MODE[mode]} on {METRIC[mode]} Dice: {parts} of the oracle's "
            f"{oracle:.3f} — {t['target']:.0%} {verdict}; the paper reached {t['paper']:.0%}."
        )
    lift = summary["targets"]["normal_lift"]
    lines.append(
        f"- S_normal's lift over the same-level baseline ({lift['same_level']:.3f}) as a share "
        "of its gap to the oracle: "
        + ", ".join(f"{DIST[d]} {rp.fmt(v, 2)}" for d, v in lift["lift"].items())
        + f" (target ≥ {lift['target']:.2f})."
    )
    usage = summary.get("abnormal_codes")
    if usage:
        lines.append(
            f"- Abnormal codes on the {usage['healthy_slices']:,} healthy slices: "
            f"{usage['healthy_distinct_codes']} distinct (target ≤ "
            f"{usage['target_distinct_codes']}), {rp.fmt(usage['healthy_null_share'], 3)} of their "
            f"cells on the commonest code; lesion cells on another code: "
            f"{rp.fmt(usage['lesion_cells_flagged'], 3)}."
        )
    dec = summary["decomposition"]
    holds = [DIST[d] for d, x in dec.items() if x["holds"]]
    fails = [DIST[d] for d, x in dec.items() if not x["holds"]]
    lines.append(
        "- Decomposition (S_normal's hits win on normal Dice and S_abnormal's on lesion Dice): "
        + (f"holds with {', '.join(holds)}" if holds else "holds with no distance")
        + (f"; does not hold with {', '.join(fails)}" if fails else "")
        + "."
    )
    books = r["binarization"]["codebooks"]
    lines.append(
        "- Binarization: E* = "
        + ", ".join(
            f"{c['E_star']:,} of {c['E']:,} bits ({c['compression']:.1%}) for the {b} codebook"
            for b, c in books.items()
        )
        + "."
    )
    clf = r["model"]["classifier"]
    if clf:
        parts = [
            f"{label} {clf[key]['ppv']:.3f}" if clf[key]["ppv"] is not None else f"{label} n/a"
            for key, label in (
                ("xhat_minus_dm", "x̂⁻ with DM"),
                ("xhat_minus_no_dm", "x̂⁻ without DM"),
                ("pseudohealthy", "pseudo-healthy truth"),
                ("x", "input x"),
            )
            if key in clf
        ]
        lines.append(
            f"- Leakiness, classifier PPV: {', '.join(parts)}; prevalence "
            f"{next(iter(clf.values()))['prevalence']:.3f}."
        )
    return "\n".join(lines) + "\n"
