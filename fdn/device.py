"""Which torch device a command runs on: the one place that decides it."""

from __future__ import annotations

from fdn.errors import FdnError


def resolve_device(requested: str | None = None) -> str:
    """"cuda" or "cpu" for a request of None/"auto" (CUDA when torch sees a GPU), "cpu" or "cuda".

    Raises FdnError for "cuda" on a machine where torch sees no GPU, and for anything else.
    """
    import torch

    if requested in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise FdnError("--device cuda: torch sees no CUDA GPU here; use --device cpu or auto")
        return "cuda"
    raise FdnError(f"device must be auto, cpu or cuda; got {requested!r}")
