"""The quality report's binarization and model sections: codebook bits and concordance, the
Appendix F and LUT timings, the model's figures and the leakiness classifiers."""

from __future__ import annotations

from benchmarks import report as rp
from benchmarks.quality.labels import DISTANCE_NAMES, MODE_NAMES
from benchmarks.quality.markdown_cells import table

DIST, MODE = DISTANCE_NAMES, MODE_NAMES


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
    text += table(
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
    text += table(
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
    text += table(
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
    text += table(["mode", "D_E ms", "D_A ms", "D_H ms", "D_H vs D_E reduction"], rows)
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
                rp.fmt(ev.get("train_steps")),
                f"{rec['l1_plus_per_pixel']:.4f}",
                f"{rec['l1_minus_per_pixel']:.4f}",
                " / ".join(rp.fmt(dice[c]["mean"]) for c in ("NET", "ED", "ET")),
                f"{comp['normal']:.2f} / {comp['abnormal']:.2f}",
                f"{ev['codes_used']['normal']} / {ev['codes_used']['abnormal']} of "
                f"{comp['codebook_size']}",
                rp.fmt(leak.get("mae_xhat_minus_vs_pseudohealthy_in_lesion")),
                rp.fmt(leak.get("mae_x_vs_pseudohealthy_in_lesion")),
                rp.fmt(leak.get("mae_xhat_minus_vs_pseudohealthy_outside")),
            ]
        )
    text += table(
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
                rp.fmt(c["sensitivity"]),
                rp.fmt(c["specificity"]),
                rp.fmt(c["auc"]),
                f"{c['n_train']} / {c['n_test']}",
                f"{len(c['seeds'])} × {c['steps']:.0f} ({c['train_seconds']:.1f} s)",
            ]
        )
    text += table(
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
