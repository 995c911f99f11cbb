"""Training and encoding speed of every FDN preset on this machine (not a test).

For each preset, in a fresh subprocess (so peak memory is that preset's own):
- training seconds per step of Algorithm 1 (m = 5 critic steps + one model step), after one
  warm-up step, on random slices with lesions (timing does not depend on content);
- encoding slices per second (`model.encode`, eval mode, no decoders);
- peak memory: max RSS of the process (CPU) or torch.cuda.max_memory_allocated (CUDA).
Paper-size presets run 1 timed step at a small batch; CPU presets a few steps at their batch.

    .venv/bin/python benchmarks/model_speed.py [--presets tiny,cpu-64] [--threads N]

writes benchmarks/results/model_speed.json and .md.
"""

import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import click
import numpy as np
import torch

from benchmarks import report as rp

RESULTS = Path(__file__).parent / "results"
PLAN = {  # preset: (batch size for training, timed steps, encode slices)
    "tiny": (16, 10, 512),
    "cpu-64": (16, 5, 512),
    "cpu-128": (16, 3, 256),
    "fdn-4x4": (2, 1, 8),
    "fdn-8x8": (2, 1, 8),
    "fdn-16x16": (2, 1, 8),
    "fdn-32x32": (2, 1, 8),
}


def random_slices(n: int, size: int):
    from fdn.training.data import SliceSet

    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 4, size, size, generator=g).half()
    targets = torch.zeros(n, size, size, dtype=torch.uint8)
    targets[1::2, size // 4 : size // 2, size // 4 : size // 2] = 2
    return SliceSet(images, targets, np.array(["c"] * n), np.arange(n))


def measure(preset: str) -> dict:
    from fdn.archive_index.encode import resolve_device
    from fdn.model import PRESETS
    from fdn.training.trainer import Trainer

    batch, steps, n_encode = PLAN[preset]
    dev = resolve_device("auto")
    config = replace(PRESETS[preset], batch_size=batch)
    slices = random_slices(max(2 * batch, 8), config.image_size)
    trainer = Trainer(config, slices, preset, 0, dev)
    trainer.train_step()  # warm-up (and data-dependent codebook init)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - t) / steps
    model = trainer.model.eval()
    x = torch.randn(min(64, n_encode), 4, config.image_size, config.image_size, device=dev)
    x = x.contiguous(memory_format=torch.channels_last)
    model.encode(x[:2])
    reps = max(1, n_encode // x.shape[0])
    t = time.perf_counter()
    for _ in range(reps):
        model.encode(x)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    enc = reps * x.shape[0] / (time.perf_counter() - t)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        mem_kind = "cuda max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        mem_kind = "process max RSS"
    return {
        "preset": preset,
        "device": dev.type,
        "image_size": config.image_size,
        "latent_size": config.latent_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_batch": batch,
        "timed_steps": steps,
        "train_s_per_step": round(step_s, 4),
        "encode_slices_per_s": round(enc, 1),
        "peak_memory_mib": round(peak, 1),
        "memory": mem_kind,
        "threads": torch.get_num_threads(),
    }


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--presets",
    default=",".join(PLAN),
    show_default=True,
    help="Comma-separated presets to time, each in a fresh process.",
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=None,
    help="torch threads (default: torch's choice).",
)
@click.option("--one", hidden=True, help="Time this one preset and print its row as JSON.")
def main(presets: str, threads: int | None, one: str | None) -> None:
    """Seconds per training step and encoding throughput of every preset."""
    if threads:
        torch.set_num_threads(threads)
    if one:
        click.echo(json.dumps(measure(one)))
        return
    rows = []
    for preset in presets.split(","):
        cmd = [sys.executable, "-m", "benchmarks.model_speed", "--one", preset]
        if threads:
            cmd += ["--threads", str(threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], file=sys.stderr)
    load = [f"{v:.2f}" for v in os.getloadavg()]
    meta = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cpus": torch.get_num_threads(),
        "load_average_at_end": load,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    RESULTS.mkdir(exist_ok=True)
    rp.write_json(RESULTS / "model_speed.json", {"meta": meta, "rows": rows})
    lines = [
        f"# FDN model speed ({meta['date']}, torch {meta['torch']}, "
        f"load average at end {' '.join(load)})",
        "",
        "| preset | device | input | latent | params | batch | s/step | encode slices/s "
        "| peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['device']} | {r['image_size']}² | "
            f"{r['latent_size']}×{r['latent_size']} | {r['parameters']:,} | "
            f"{r['train_batch']} | {r['train_s_per_step']} | "
            f"{r['encode_slices_per_s']} | {r['peak_memory_mib']} |"
        )
    lines += [
        "",
        "s/step: one step of Algorithm 1 (5 critic steps + 1 model step), after a "
        "warm-up step. Peak memory: " + rows[0]["memory"] + f". torch threads: "
        f"{rows[0]['threads']}. The development machine (2 cores) is shared: compare "
        "rows of one run only, and read the load average above.",
    ]
    rp.write_text(RESULTS / "model_speed.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
