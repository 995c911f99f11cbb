"""report.md of the quality benchmark, written from its results dict (see benchmarks.quality.run):
the protocol, then the sections of `markdown_retrieval` and `markdown_model`, figures and the
command that reproduces the run."""

from __future__ import annotations

from pathlib import Path

from benchmarks import report as rp
from benchmarks.quality.markdown_model import binarization_section, model_section
from benchmarks.quality.markdown_retrieval import headline_section, retrieval_section


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
