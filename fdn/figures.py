"""Figures written crash-safely: the one way `fdn` (and the benchmarks) save a matplotlib figure."""

from __future__ import annotations

from pathlib import Path

from crashsafe import atomic_write


def save_figure(fig, path: str | Path, **savefig_options) -> Path:
    """Save a matplotlib figure (format from the suffix, PNG by default) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    options = {"format": path.suffix.lstrip(".").lower() or "png", **savefig_options}
    try:
        return atomic_write(path, lambda f: fig.savefig(f, **options))
    finally:
        plt.close(fig)
