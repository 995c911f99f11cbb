"""What gating the abnormal codes costs `encode`, on a trained model and real slices (not a test).

Encodes the brain slices of an archive with the model's gate off, one gate pass, and gated to
a fixed point (`FDNConfig.gate_to_fixed_point`), in interleaved rounds so that all three see
the same machine load, and reports slices per second, the ratio to no gate, the segmentation
decoder rows run per slice (a hook on the decoder counts them) and the non-null cells kept.

    .venv/bin/python -m benchmarks.gate_cost [--model models/cpu-64-null] [--archive DIR]

writes benchmarks/results/gate-cost/report.md and results.json. Without --archive it
synthesises a 12-case archive (seed 1000, never trained on) into a temporary folder.
"""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import click
import numpy as np
import torch

from benchmarks import report as rp
from benchmarks.options import out_option

SETTINGS = {  # name: (gate_abnormal_codes, gate_to_fixed_point)
    "no gate": (False, False),
    "one pass": (True, False),
    "fixed point": (True, True),
}


def brain_slices(archive_root: Path, size: int) -> torch.Tensor:
    """(N, 4, size, size) float32: every slice of the archive with brain in it."""
    from fdn.data import Archive

    archive = Archive(archive_root)
    stacks = []
    for case in archive.case_ids:
        vol = archive.load(case, size)
        keep = vol.brain.reshape(vol.brain.shape[0], -1).any(1)
        stacks.append(np.ascontiguousarray(vol.image[keep], np.float32))
    return torch.from_numpy(np.concatenate(stacks))


def measure(model_dir: Path, slices: torch.Tensor, rounds: int, batch: int) -> dict:
    from fdn.training.checkpoint import load_model

    model, config = load_model(model_dir, device="cpu")
    decoded_rows = [0]
    model.seg_decoder.register_forward_hook(
        lambda _m, inputs, _out: decoded_rows.__setitem__(0, decoded_rows[0] + inputs[0].shape[0])
    )
    seconds = {name: [] for name in SETTINGS}
    per_slice, kept = {}, {}
    for _ in range(rounds):
        for name, (gate, fixed) in SETTINGS.items():
            model.config = replace(config, gate_abnormal_codes=gate, gate_to_fixed_point=fixed)
            decoded_rows[0] = 0
            codes = []
            t = time.perf_counter()
            for start in range(0, slices.shape[0], batch):
                codes.append(model.encode(slices[start : start + batch])[1])
            seconds[name].append(time.perf_counter() - t)
            per_slice[name] = decoded_rows[0] / slices.shape[0]
            kept[name] = int((torch.cat(codes) != 0).sum())
    n = slices.shape[0]
    best = {name: min(s) for name, s in seconds.items()}
    return {
        "model": str(model_dir),
        "slices": n,
        "batch": batch,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "settings": {
            name: {
                "slices_per_s": n / best[name],
                "time_ratio_to_no_gate": best[name] / best["no gate"],
                "seg_decoder_rows_per_slice": per_slice[name],
                "non_null_cells": kept[name],
                "seconds_per_round": seconds[name],
            }
            for name in SETTINGS
        },
    }


def markdown(r: dict) -> str:
    rows = [
        [
            name,
            rp.fmt(s["slices_per_s"], 4),
            rp.fmt(s["time_ratio_to_no_gate"], 3),
            rp.fmt(s["seg_decoder_rows_per_slice"], 3),
            str(s["non_null_cells"]),
        ]
        for name, s in r["settings"].items()
    ]
    header = "| gate | slices/s | time / no gate | ŷ decodes per slice | non-null abnormal cells |"
    lines = [
        "# Cost of gating the abnormal codes in `encode`\n",
        "Written by `python -m benchmarks.gate_cost`. "
        f"Model `{r['model']}`, {r['slices']} brain slices, batches of {r['batch']}, "
        f"{r['threads']} torch thread(s); best of {r['rounds']} interleaved rounds per setting. "
        "A gate pass runs the segmentation decoder on the slices not yet stable.\n",
        header,
        "|---|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    return "\n".join(lines) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--model",
    "model_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("models/cpu-64-null"),
    show_default=True,
    help="Trained model with the null-code prior.",
)
@click.option(
    "--archive",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Archive to encode [default: a 12-case synthetic one, seed 1000].",
)
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True)
@click.option("--batch", type=click.IntRange(1), default=64, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True)
@out_option("gate-cost")
def main(
    model_dir: Path, archive: Path | None, rounds: int, batch: int, threads: int, out: str
) -> None:
    """Slices per second of `encode` with no gate, one gate pass and the fixed point."""
    from fdn.synth import synthesize_archive
    from fdn.training.checkpoint import load_model

    torch.set_num_threads(threads)
    config = load_model(model_dir, device="cpu")[1]
    if config.null_code_weight <= 0:
        raise click.UsageError(f"{model_dir}: trained without the null-code prior; no gate to time")
    size = config.image_size
    with tempfile.TemporaryDirectory() as tmp:
        if archive is None:
            archive = Path(tmp) / "archive"
            synthesize_archive(archive, n_cases=12, size=size, seed=1000, healthy_fraction=0.25)
        with torch.no_grad():
            results = measure(model_dir, brain_slices(archive, size), rounds, batch)
    rp.write_report(out, results, markdown(results))
    click.echo(markdown(results))


if __name__ == "__main__":
    main()
