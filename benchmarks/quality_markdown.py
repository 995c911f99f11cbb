"""report.md of the quality benchmark, written from its results dict (see benchmarks.quality)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks import report as rp
from benchmarks.quality_labels import (
    BASELINES,
    DISTANCE_NAMES,
    METRIC_OF_MODE,
    MODE_NAMES,
    ORACLE_OF_MODE,
)

DIST, MODE, METRIC, ORACLE = DISTANCE_NAMES, MODE_NAMES, METRIC_OF_MODE, ORACLE_OF_MODE


def _pm(s: dict) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def _cell(scores: dict, method: str, mode: str, with_ratio: bool = True) -> str:
    metric = METRIC[mode]
    s = scores[method][metric]
    oracle = scores[ORACLE[mode]][metric]["mean"]
    ratio = f" ({s['mean'] / oracle:.0%})" if with_ratio and oracle else ""
    return _pm(s) + ratio


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _f(x, digits: int = 3) -> str:
    return rp.fmt(x, digits)


def retrieval_section(r: dict) -> str:
    scores, summary = r["scores"], r["summary"]
    modes = ("normal", "abnormal", "sum", "sum-normalized")
    headers = ["method"] + [f"{MODE[m]} ({METRIC[m]} Dice)" for m in modes]
    rows = []
    for dist, name in DIST.items():
        rows.append([name] + [_cell(scores, f"{m}/{dist}", m) for m in modes])
    for method, label in (
        ("raw-pixel", "raw pixels (16×16×4, Euclidean)"),
        ("model-seg", "the model's ŷ, lesion Dice (the segmentation alone)"),
        ("grid-truth", "true lesion classes per code-grid cell, cosine (the grid's resolution)"),
        ("random", f"random ({r['config']['random_draws']} draws)"),
        ("same-level", f"same level, random volumes ({r['config']['random_draws']} draws)"),
    ):
        rows.append([label] + [_cell(scores, method, m) for m in modes])
    rows.append(
        ["**Dice oracle**"] + [_cell(scores, ORACLE[m], m, with_ratio=False) for m in modes]
    )
    text = (
        "## Retrieval quality (Table 2 protocol)\n\n"
        "Mean ± std over the queries of the mean Dice of the top-"
        f"{r['config']['topq']} volumes, each on the labels its mode is about; in brackets "
        "the ratio to the oracle of the same column. The paper (Table 2, BraTS, FDN 8×8 + "
        "DM): S_normal 0.50/0.48/0.47 (D_E/D_H/D_A) vs oracle 0.62; S_abnormal 0.28 vs "
        "0.37; S_sum 0.20–0.30 vs 0.42.\n\n"
    )
    text += _table(headers, rows)
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
    text += _table(["mode", "distance", "ratio to oracle", "paper", "target"], t_rows)
    lift = summary["targets"]["normal_lift"]
    text += (
        f"\nS_normal's lift over the same-level baseline (random volumes, the slice at the "
        f"query's relative level: normal Dice {lift['same_level']:.3f}, oracle "
        f"{lift['oracle']:.3f}), as a share of the gap between them; target ≥ "
        f"{lift['target']:.0%}:\n\n"
    )
    text += _table(
        ["distance", "lift", "target"],
        [
            [
                name,
                _f(lift["lift"][d], 3),
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
        text += _table(
            ["method", "mean level gap"],
            [[name, _f(gaps[f"normal/{d}"], 3)] for d, name in DIST.items()]
            + [["Dice oracle", _f(gaps["oracle/normal"], 3)]],
        )
    text += "\n### All three Dice of every method (cross-scores included)\n\n"
    rows = []
    for mode in modes:
        for dist, name in DIST.items():
            s = scores[f"{mode}/{dist}"]
            rows.append([MODE[mode], name, _pm(s["normal"]), _pm(s["lesion"]), _pm(s["sum"])])
    for method in ("oracle/normal", "oracle/abnormal", "oracle/sum", *BASELINES):
        s = scores[method]
        rows.append([method, "", _pm(s["normal"]), _pm(s["lesion"]), _pm(s["sum"])])
    text += _table(["mode", "distance", "normal Dice", "lesion Dice", "mean of both"], rows)
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
                f"(p {_f(d['p_normal'], 2)})",
                f"{d['lesion_dice_of_S_abnormal']:.3f} vs {d['lesion_dice_of_S_normal']:.3f} "
                f"(p {_f(d['p_lesion'], 2)})",
                "**holds**" if d["holds"] else "**does not hold**",
            ]
        )
    text += _table(
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
        + ", ".join(f"{DIST[d]} {_f(v, 2)}" for d, v in lift["lift"].items())
        + f" (target ≥ {lift['target']:.2f})."
    )
    usage = summary.get("abnormal_codes")
    if usage:
        lines.append(
            f"- Abnormal codes on the {usage['healthy_slices']:,} healthy slices: "
            f"{usage['healthy_distinct_codes']} distinct (target ≤ "
            f"{usage['target_distinct_codes']}), {_f(usage['healthy_null_share'], 3)} of their "
            f"cells on the commonest code; lesion cells on another code: "
            f"{_f(usage['lesion_cells_flagged'], 3)}."
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


def binarization_section(r: dict) -> str:
    b = r["binarization"]
    text = (
        "## Binarization (4.4.5, 5.3)\n\nE = K(K−1)/2 hyperplane bits per code, E* after "
        "Algorithm A.1. Concordance: mean Jaccard of each code's top-Q neighbours under "
        "Hamming (b: all E bits, b*: the E* kept) and Euclidean distance, over all K codes "
        "(as the paper) and over the live (non-zero) codes only. Paper (K = 512): E* = "
        "789 / 292, E*/E = 0.60% / 0.22%, b* concordance 0.81/0.89/0.90.\n\n"
    )
    rows = []
    for book, c in b["codebooks"].items():
        conc = c["concordance"]
        row = [book, c["K"], c["live"], c["E"], c["E_star"], f"{c['compression']:.2%}"]
        for key in ("b_all", "b_star_all", "b_live", "b_star_live"):
            row.append(" / ".join(f"{conc[key][f'top{q}']:.2f}" for q in (1, 5, 10)))
        rows.append(row)
    text += _table(
        [
            "codebook",
            "K",
            "live",
            "E",
            "E*",
            "E*/E",
            "b, all (top1/5/10)",
            "b*, all",
            "b, live",
            "b*, live",
        ],
        rows,
    )
    text += (
        "\n### Hamming vs Euclidean timing (Appendix F)\n\nListing F.1 per pair: the "
        "distance from each of the K codes to all K codes, one Python call per pair, mean "
        "of the repeats; reduction = 1 − t_H / t_E (paper: 48.3% normal, 64.5% abnormal). "
        "Vectorised: the same K × K matrices in one numpy expression each (popcount of "
        "packed b* bytes vs the Gram-matrix Euclidean distance).\n\n"
    )
    rows = []
    for book, a in b["appendix_f"].items():
        rows.append(
            [
                book,
                a["E_star"],
                f"{a['t_E'] * 1e3:.1f}",
                f"{a['t_H'] * 1e3:.1f}",
                f"{a['reduction']:.1%}",
                f"{a['t_H_full'] * 1e3:.1f} ({a['reduction_full']:.1%})"
                if "t_H_full" in a
                else "—",
                f"{a['vectorised_t_E'] * 1e3:.3f}",
                f"{a['vectorised_t_H'] * 1e3:.3f}",
                f"{a['vectorised_reduction']:.1%}",
            ]
        )
    text += _table(
        [
            "codebook",
            "E*",
            "t_E ms",
            "t_H (b*) ms",
            "reduction",
            "t_H (b, all E) ms",
            "vectorised t_E ms",
            "vectorised t_H ms",
            "vectorised reduction",
        ],
        rows,
    )
    im = b["appendix_f_images"]
    text += (
        f"\nThe same on image codes: all {im['pairs']:,} ordered pairs of the "
        f"{im['images']} query slices, the flattened continuous grid (P·D floats) vs the "
        "concatenated optimized bits (P·E* bits).\n\n"
    )
    text += _table(
        ["codebook", "floats", "bits", "t_E ms", "t_H ms", "reduction"],
        [
            [
                book,
                im[book]["floats"],
                im[book]["bits"],
                f"{im[book]['t_E'] * 1e3:.1f}",
                f"{im[book]['t_H'] * 1e3:.1f}",
                f"{im[book]['reduction']:.1%}",
            ]
            for book in ("normal", "abnormal")
        ],
    )
    lut = b["lut"]
    text += (
        f"\n### At scale: the compiled LUT engine on the test index\n\nSingle-query "
        f"volume-wise top-{r['config']['topq']} over {lut['n_slices']:,} slices, p50 over "
        f"{lut['queries']} queries × {lut['repeats']} repeats (ms). The speed benchmark "
        "measures 10k–1M slices.\n\n"
    )
    rows = []
    for mode in ("normal", "abnormal", "sum"):
        rows.append(
            [MODE[mode]]
            + [f"{lut[f'{mode}/{d}']['p50_ms']:.3f}" for d in DIST]
            + [f"{lut[f'{mode}/reduction_vs_euclidean']:.1%}"]
        )
    text += _table(["mode", "D_E ms", "D_A ms", "D_H ms", "D_H vs D_E reduction"], rows)
    return text


def model_section(r: dict) -> str:
    m = r["model"]
    names = {"dm": "with DM", "no_dm": "without DM"}
    text = "## Model (4.4.1–4.4.4, on the test archive)\n\n"
    rows = []
    for key, ev in m["models"].items():
        rec, dice, comp, leak = (
            ev["reconstruction"],
            ev["dice"],
            ev["compactness"],
            ev["leakiness"] or {},
        )
        rows.append(
            [
                names.get(key, key),
                _f(ev.get("train_steps")),
                f"{rec['l1_plus_per_pixel']:.4f}",
                f"{rec['l1_minus_per_pixel']:.4f}",
                " / ".join(_f(dice[c]["mean"]) for c in ("NET", "ED", "ET")),
                f"{comp['normal']:.2f} / {comp['abnormal']:.2f}",
                f"{ev['codes_used']['normal']} / {ev['codes_used']['abnormal']} of "
                f"{comp['codebook_size']}",
                _f(leak.get("mae_xhat_minus_vs_pseudohealthy_in_lesion")),
                _f(leak.get("mae_x_vs_pseudohealthy_in_lesion")),
                _f(leak.get("mae_xhat_minus_vs_pseudohealthy_outside")),
            ]
        )
    text += _table(
        [
            "model",
            "training steps",
            "L1 x vs x̂⁺ per px",
            "L1 M⁻x vs M⁻x̂⁻ per px",
            "Dice NET / ED / ET (per volume)",
            "compactness normal / abnormal",
            "codes used",
            "MAE x̂⁻ vs truth, lesion",
            "MAE x vs truth, lesion",
            "MAE x̂⁻ vs truth, outside",
        ],
        rows,
    )
    text += (
        "\nReconstruction (4.4.1): Σ‖x − x̂⁺‖₁ and Σ‖M⁻ ⊙ (x − x̂⁻)‖₁ per pixel. "
        "Direct leakiness: mean absolute error (MAE) per voxel against the synthetic "
        "pseudo-healthy truth; inside the lesion, x̂⁻ should be much closer to the truth "
        "than the input x is.\n\n### Leakiness as the paper measures it: classifier PPV "
        "(4.4.3, Appendix D scaled down)\n\nA 4-stage CNN trained on the training "
        "archive's slices to tell diseased (lesion label present) from healthy origin, "
        "tested on the test archive's slices. A blind classifier's PPV is the prevalence, but "
        "that is not the floor: lesions lie in the cerebrum, so the level of a slice and "
        "the mass effect already tell diseased slices apart. The floor is the row of the "
        "pseudo-healthy truth (a perfect x̂⁻); the input x shows full leakage. Every figure "
        "is the mean over classifiers trained with different seeds; ± is the standard "
        "deviation over those seeds.\n\n"
    )
    labels = {
        "x": "input x (everything visible)",
        "pseudohealthy": "pseudo-healthy truth (ideal x̂⁻)",
        "xhat_minus_dm": "x̂⁻ with DM",
        "xhat_minus_no_dm": "x̂⁻ without DM",
    }
    rows = []
    for key, c in m["classifier"].items():
        ppv = "n/a" if c["ppv"] is None else f"{c['ppv']:.3f} ± {c['ppv_seed_std']:.3f}"
        rows.append(
            [
                labels.get(key, key),
                ppv,
                f"{c['prevalence']:.3f}",
                _f(c["sensitivity"]),
                _f(c["specificity"]),
                _f(c["auc"]),
                f"{c['n_train']} / {c['n_test']}",
                f"{len(c['seeds'])} × {c['steps']:.0f} ({c['train_seconds']:.1f} s)",
            ]
        )
    text += _table(
        [
            "classifier input",
            "PPV ± std (seeds)",
            "prevalence",
            "sensitivity",
            "specificity",
            "AUC",
            "slices train / test",
            "seeds × steps (time each)",
        ],
        rows,
    )
    return text


def write_markdown(r: dict, path: Path) -> None:
    cfg, ta, idx = r["config"], r["test_archive"], r["index"]
    models = ", ".join(
        f"`{ev['model_dir']}` ({'DM' if ev['distribution_matching'] else 'no DM'}"
        f", trained on `{ev['train_archive']}`)"
        for ev in r["model"]["models"].values()
    )
    head = (
        "# Retrieval quality against the brute-force Dice oracle\n\n"
        f"Written by `python -m benchmarks.quality` in {r['timings_s']['total_s']:.0f} s"
        f"{' (--quick: not a result)' if cfg['quick'] else ''}.\n\n"
        f"- Models: {models}; preset `{idx['preset']}`, {idx['input_size']}² input, "
        f"{idx['grid'][0]}×{idx['grid'][1]} codes.\n"
        f"- Test archive: `{Path(ta['path']).name}` — {ta['cases']} synthetic cases (seed "
        f"{ta['seed']}, never trained on), {ta['slices']:,} slices, {ta['diseased_cases']} "
        "diseased → that many queries.\n"
        "- Protocol (4.4.6): query = the largest-lesion slice of each diseased case; "
        f"volume-wise top-{cfg['topq']} (each hit the closest slice of a different volume), the "
        "query's own case excluded; every mode with D_E, D_A, D_H on the compiled LUT engine. "
        "Oracle: the same volume-wise top-Q maximising the Dice itself (normal, lesion, or "
        "their sum for S_sum).\n"
        "- Dice: multi-class Dice = mean over the classes present in either slice of "
        "2|A∩B|/(|A|+|B|); classes absent from both are skipped (a healthy or empty hit "
        "therefore scores 0 against a query that has the class); normal Dice on the six "
        "anatomy labels, lesion Dice on NET/ED/ET, S_sum on the mean of both.\n"
        "- S_sum normalised: each term divided by its mean distance between random grids "
        "(hashindex `normalized_sum`), beside the paper's plain sum.\n\n"
        "Machine:\n\n" + rp.machine_markdown(r["machine"]) + "\n"
    )
    figures = "## Figures\n\n" + "".join(f"![{f}]({f})\n\n" for f in r["figures"])
    reproduce = (
        "## Reproduce\n\n```\npython -m benchmarks.quality --model "
        + cfg["model"]
        + (f" --model-no-dm {cfg['model_no_dm']}" if cfg["model_no_dm"] else "")
        + (f" --train-archive {cfg['train_archive']}" if cfg["train_archive"] else "")
        + (
            f" --test-archive {cfg['test_archive']}"
            if cfg["test_archive"]
            else f" --test-cases {cfg['test_cases']} --test-seed {cfg['test_seed']}"
        )
        + f" --out {cfg['out']}"
        + (" --quick" if cfg["quick"] else "")
        + "\n```\n\n"
        "Timings (s): " + ", ".join(f"{k} {v}" for k, v in r["timings_s"].items()) + "\n"
    )
    text = "\n".join(
        [
            head,
            headline_section(r),
            retrieval_section(r),
            binarization_section(r),
            model_section(r),
            figures,
            reproduce,
        ]
    )
    rp.write_text(path, text)
