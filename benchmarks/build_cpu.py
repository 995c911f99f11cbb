"""The CPU cost of encoding one case, and the PACS projection made from it.

Wall-clock stage times move with the machine's load (on this shared 2-core machine a loaded run
read and preprocessed 4x slower than a quiet one); the CPU seconds a case takes in one thread
move far less. `cpu_per_case` reads, preprocesses and encodes each case of an archive the way a
build's worker does (`Archive.load(..., extras=("seg",))`, `encode_images`), in this process
with torch on one thread, and records `time.process_time` per stage. `projection` turns that into
hours for a PACS on N two-core workers, the read bandwidth the shared storage must give, and
(from `benchmarks.assembly_scale`'s figures, when given) the assembly's time and memory.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks import report as rp

PACS_VOLUMES = 65_000
SLICES_PER_VOLUME = 155
WORKER_MACHINES = (1, 4, 16, 64)  # two-core workers, each running two single-threaded processes


def cpu_per_case(archive_root: Path, model_dir: Path) -> dict:
    """CPU seconds per case of reading + preprocessing and of encoding, one thread."""
    import torch

    from fdn.archive_index.encode import encode_images
    from fdn.data import Archive
    from fdn.training.checkpoint import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        archive = Archive(archive_root)
        model, config = load_model(model_dir, device="cpu")
        cases = []
        for case in archive.case_ids:
            t0 = time.process_time()
            volume = archive.load(case, config.image_size, extras=("seg",))
            t1 = time.process_time()
            encode_images(model, volume.image, batch_size=64, device=torch.device("cpu"))
            t2 = time.process_time()
            files = archive.case_files(case)
            read_bytes = sum(
                p.stat().st_size for k, p in files.items() if k not in ("anat", "pseudohealthy")
            )
            cases.append(
                {
                    "case": case,
                    "slices": int(volume.image.shape[0]),
                    "load_cpu_s": t1 - t0,
                    "encode_cpu_s": t2 - t1,
                    "read_bytes": read_bytes,
                }
            )
    finally:
        torch.set_num_threads(threads)
    n = len(cases)
    slices = sum(c["slices"] for c in cases)
    cpu = sum(c["load_cpu_s"] + c["encode_cpu_s"] for c in cases)
    return {
        "cases": cases,
        "load_cpu_s_per_case": sum(c["load_cpu_s"] for c in cases) / n,
        "encode_cpu_s_per_case": sum(c["encode_cpu_s"] for c in cases) / n,
        "slices_per_cpu_s": slices / cpu,
        "read_bytes_per_slice": sum(c["read_bytes"] for c in cases) / slices,
    }


def projection(cost: dict, assembly: dict | None = None) -> dict:
    """Hours, storage bandwidth and assembly figures for PACS_VOLUMES volumes."""
    slices = PACS_VOLUMES * SLICES_PER_VOLUME
    per_machine = 2 * cost["slices_per_cpu_s"]  # two single-threaded workers per 2-core machine
    rows = []
    for machines in WORKER_MACHINES:
        rate = machines * per_machine
        rows.append(
            {
                "machines": machines,
                "hours": slices / rate / 3600,
                "read_mb_per_s": rate * cost["read_bytes_per_slice"] / 1e6,
            }
        )
    out = {"slices": slices, "slices_per_s_per_machine": per_machine, "rows": rows}
    if assembly:
        largest = max(assembly["runs"], key=lambda r: r["slices"])
        out["assembly"] = {
            "slices": largest["slices"],
            "minutes": largest["assemble_s"] / 60 * slices / largest["slices"],
            "peak_rss_gib": largest["peak_rss_bytes"] / 2**30 * slices / largest["slices"],
        }
    return out


def render_markdown(cost: dict, plan: dict) -> list[str]:
    """The report's sections for the CPU cost and the projection."""
    lines = [
        "## CPU seconds per case (one thread, `time.process_time`)\n",
        "Each case read, preprocessed (sequences and seg only, as a build reads them) and encoded "
        "in this process with torch on one thread; CPU time moves less with the machine's load "
        "than the wall-clock stages above.\n",
        rp.markdown_table(
            ["case", "slices", "read + preprocess", "encode", "MB read"],
            [
                [c["case"], c["slices"], c["load_cpu_s"], c["encode_cpu_s"], c["read_bytes"] / 1e6]
                for c in cost["cases"]
            ],
        ),
        f"\n{cost['slices_per_cpu_s']:.0f} slices per CPU second: "
        f"**{plan['slices_per_s_per_machine']:.0f} slices/s per two-core worker machine** "
        "(two single-threaded workers; target ≥ 100).\n",
        f"## Projection for a PACS of {PACS_VOLUMES:,} volumes ({plan['slices'] / 1e6:.1f}M "
        "slices), from the CPU cost\n",
        "Assumes the workers scale linearly (each case is independent) and that the shared "
        "storage delivers the read rate below (compressed NIfTI: the four sequences and seg).\n",
        rp.markdown_table(
            ["two-core machines", "hours", "storage read MB/s"],
            [[r["machines"], r["hours"], r["read_mb_per_s"]] for r in plan["rows"]],
        ),
    ]
    if "assembly" in plan:
        a = plan["assembly"]
        lines.append(
            f"\nThen the assembly, in one process: {a['minutes']:.1f} min and "
            f"{a['peak_rss_gib']:.1f} GiB of memory, scaled from its {a['slices']:,}-slice run "
            "(`benchmarks/results/assembly-scale`).\n"
        )
    return lines
