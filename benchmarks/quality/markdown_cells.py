"""Markdown cells and tables of the quality report, shared by its sections."""

from __future__ import annotations

from benchmarks.quality.labels import METRIC_OF_MODE, ORACLE_OF_MODE


def pm(s: dict) -> str:
    """A score as mean ± std (s: {"mean", "std", ...})."""
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def cell(scores: dict, method: str, mode: str, with_ratio: bool = True) -> str:
    """A method's score on the mode's own metric, with its share of that mode's oracle."""
    metric = METRIC_OF_MODE[mode]
    s = scores[method][metric]
    oracle = scores[ORACLE_OF_MODE[mode]][metric]["mean"]
    ratio = f" ({s['mean'] / oracle:.0%})" if with_ratio and oracle else ""
    return pm(s) + ratio


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table of cells already written as text (`benchmarks.report.
    markdown_table` formats numbers itself)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
