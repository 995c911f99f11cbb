"""One table over several runs of the quality benchmark: the ablation of issue #13.

Run ``python -m benchmarks.quality --model DIR --out benchmarks/results/quality-ablation/NAME``
once per model (same test archive seed), then ``python -m benchmarks.quality.ablation
benchmarks/results/quality-ablation/NAME ... --out quality-ablation``. Each
row reads one run's results.json and the model's config.json; the columns are the issue's
targets: S_normal and S_abnormal as shares of the oracle, S_normal's lift over the same-level
baseline, the abnormal codes of healthy slices, abnormal compactness, the classifier PPV of x̂⁻
against the pseudo-healthy truth's, and whether the decomposition holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from benchmarks import report as rp
from benchmarks.options import out_option
from benchmarks.quality.labels import DISTANCE_NAMES

# The config fields an ablation varies, shown per row when they differ from the first run.
VARIED = (
    "spade_masked_layout",
    "separate_decoder_passes",
    "null_code_weight",
    "gate_abnormal_codes",
    "gate_to_fixed_point",
    "null_code_at_origin",
    "beta",
    "distribution_matching",
    "codebook_size",
    "width",
    "latent_size",
    "lambda_reg",
    "lambda_critic",
)


def _model_config(results: dict) -> dict:
    path = Path(results["model"]["models"]["dm"]["model_snapshot"]) / "config.json"
    if not path.is_file():
        path = Path(results["index"]["model"]) / "config.json"
    from fdn.training.checkpoint import config_from_dict

    return vars(config_from_dict(json.loads(path.read_text()), str(path)))


def _metrics(model_dir: Path) -> list[dict]:
    """The per-epoch rows of the model's metrics.jsonl ([] if absent)."""
    path = model_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def latent_loss_trend(model_dir: Path) -> tuple[float | None, float | None]:
    """L_lat of the first and the last epoch in the model's metrics.jsonl (None if absent)."""
    values = [row["lat"] for row in _metrics(model_dir) if row.get("lat") is not None]
    return (values[0], values[-1]) if values else (None, None)


def trained_steps(model_dir: Path) -> int | None:
    """The step of the last row of the model's metrics.jsonl: the weights a training writes
    last, with or without a checkpoint.pt beside them (shipped models have none)."""
    steps = [row["step"] for row in _metrics(model_dir) if row.get("step") is not None]
    return int(steps[-1]) if steps else None


def ablation_row(name: str, results: dict) -> dict:
    """The issue's figures of one quality run."""
    summary, model = results["summary"], results["model"]
    targets = summary["targets"]
    ev = model["models"]["dm"]
    clf = model["classifier"]
    ppv_gap = None
    if "xhat_minus_dm" in clf and "pseudohealthy" in clf:
        if clf["xhat_minus_dm"]["ppv"] is not None and clf["pseudohealthy"]["ppv"] is not None:
            ppv_gap = clf["xhat_minus_dm"]["ppv"] - clf["pseudohealthy"]["ppv"]
    usage = summary.get("abnormal_codes", {})
    # S_abnormal by the two reference rankings (the model's own ŷ, the truth on the code grid)
    # beside the code distances; a run made before a reference was measured lacks its row
    oracle = summary["baselines"]["oracle/abnormal"]["lesion"]

    def share_of_oracle(baseline: str) -> float | None:
        found = summary["baselines"].get(baseline)
        return found["lesion"] / oracle if found is not None and oracle else None

    lat_first, lat_last = latent_loss_trend(Path(ev["model_dir"]))
    return {
        "name": name,
        "config": _model_config(results),
        "train_steps": ev.get("train_steps") or trained_steps(Path(ev["model_dir"])),
        "lat_first_epoch": lat_first,
        "lat_last_epoch": lat_last,
        "normal_ratio": targets["normal"]["ratios"],
        "abnormal_ratio": targets["abnormal"]["ratios"],
        "abnormal_seg_ranking": share_of_oracle("model-seg"),
        "abnormal_grid_truth": share_of_oracle("grid-truth"),
        "normal_lift": targets["normal_lift"]["lift"],
        "healthy_distinct_codes": usage.get("healthy_distinct_codes"),
        "healthy_null_share": usage.get("healthy_null_share"),
        "lesion_cells_flagged": usage.get("lesion_cells_flagged"),
        "abnormal_compactness": ev["compactness"]["abnormal"],
        "ppv_gap": ppv_gap,
        "decomposition": {d: v["holds"] for d, v in summary["decomposition"].items()},
        "test_archive": results["test_archive"]["path"],
    }


def _changes(row: dict, first: dict) -> str:
    diffs = [
        f"{k}={row['config'][k]}" for k in VARIED if row["config"].get(k) != first["config"].get(k)
    ]
    return ", ".join(diffs) or "—"


def _triple(values: dict, digits: int = 2, percent: bool = True) -> str:
    return " / ".join(
        (f"{values[d]:.0%}" if percent else rp.fmt(values[d], digits))
        if values[d] is not None
        else "—"
        for d in DISTANCE_NAMES
    )


def _share(value: float | None, digits: int = 0) -> str:
    return f"{value:.{digits}%}" if value is not None else "—"


def markdown(rows: list[dict]) -> str:
    first = rows[0]
    base = ", ".join(f"{k}={first['config'][k]}" for k in VARIED)
    lines = [
        "# Ablation of the decomposition (issue #13)\n",
        "Written by `python -m benchmarks.quality.ablation`; each row is one run of "
        "`python -m benchmarks.quality` on the same test archive (never trained on). Ratios "
        "are shares of the Dice oracle, per distance D_E / D_A / D_H; lift is S_normal's gain "
        "over the same-level baseline as a share of that baseline's gap to the oracle; PPV gap "
        "is the classifier PPV of x̂⁻ minus that of the pseudo-healthy truth; ŷ ranking is the "
        "share of the oracle reached by ranking on the lesion Dice of the model's own "
        "segmentations, decoded from the abnormal codes; grid truth ranks by the cosine of the "
        "true lesion classes counted per cell of the code grid, what codes holding exactly "
        "their cell's lesion content would give.\n",
        f"First row's config: {base}; later rows list what they change.\n",
        "Targets: S_abnormal ≥ 80 %, S_normal ≥ 88 % with lift ≥ 0.40, healthy slices on ≤ 3 "
        "abnormal codes, abnormal compactness > 0, PPV gap ≤ 0.05, decomposition holds.\n",
        "| run | changes | steps | L_lat first → last epoch | S_normal | lift | S_abnormal "
        "| ŷ ranking | grid truth | healthy codes (share on null) | lesion cells flagged "
        "| abnormal compactness | PPV gap | decomposition |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        failed = [DISTANCE_NAMES[d] for d, ok in row["decomposition"].items() if not ok]
        decomposition = "fails: " + ", ".join(failed) if failed else "holds"
        lines.append(
            f"| {row['name']} | {_changes(row, first)} | {row['train_steps'] or '—'} | "
            f"{rp.fmt(row['lat_first_epoch'], 3)} → {rp.fmt(row['lat_last_epoch'], 3)} | "
            f"{_triple(row['normal_ratio'])} | {_triple(row['normal_lift'], percent=False)} | "
            f"{_triple(row['abnormal_ratio'])} | {_share(row['abnormal_seg_ranking'])} | "
            f"{_share(row['abnormal_grid_truth'])} | "
            f"{row['healthy_distinct_codes']} "
            f"({_share(row['healthy_null_share'], digits=2)}) | "
            f"{rp.fmt(row['lesion_cells_flagged'], 3)} | "
            f"{rp.fmt(row['abnormal_compactness'], 3)} | {rp.fmt(row['ppv_gap'], 3)} | "
            f"{decomposition} |"
        )
    return "\n".join(lines) + "\n"


@click.command()
@click.argument("runs", nargs=-1, required=True)
@out_option("quality-ablation")
def main(runs, out):
    """Tabulate quality runs (folders holding results.json, or bare names under
    benchmarks/results/) into OUT/report.md and OUT/results.json."""
    rows = []
    for run in runs:
        folder = rp.results_dir(run)
        path = folder / "results.json"
        if not path.is_file():
            raise click.ClickException(f"{path}: missing; run benchmarks.quality --out {run}")
        rows.append(ablation_row(folder.name, json.loads(path.read_text())))
    archives = {row["test_archive"] for row in rows}
    if len({Path(a).name for a in archives}) > 1:
        raise click.ClickException(
            f"the runs used different test archives ({sorted(archives)}); compare like with like"
        )
    folder = rp.results_dir(out)
    rp.write_json(folder / "results.json", {"rows": rows})
    text = markdown(rows)
    rp.write_text(folder / "report.md", text)
    click.echo(text)


if __name__ == "__main__":
    main()
