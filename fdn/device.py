"""Which torch device a command runs on: the one place that decides it."""

from __future__ import annotations

from fdn.errors import FdnError


def resolve_device(requested=None) -> str:
    """The device to run on, as a string torch accepts: for None or "auto" "cuda" when torch
    sees a GPU, else "cpu"; "cpu", "cuda" or "cuda:N" (or a torch.device) as asked.

    Raises FdnError for CUDA on a machine where torch sees no GPU, and for anything else.
    """
    import torch

    if isinstance(requested, torch.device):
        requested = str(requested)
    if requested in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    if isinstance(requested, str) and (requested == "cuda" or requested.startswith("cuda:")):
        if not torch.cuda.is_available():
            raise FdnError(
                f"--device {requested}: torch sees no CUDA GPU here; use --device cpu or auto"
            )
        return requested
    raise FdnError(f"device must be auto, cpu or cuda; got {requested!r}")


def training_threads(device: str, image_size: int, threads: int | None) -> int | None:
    """CPU threads for training: as asked, else 1 for a small model (≤ 128²) on the CPU — such
    models gain nothing from threads, which spin badly on a busy machine — else torch's choice
    (None). `device` is a resolved device."""
    if threads is not None:
        return threads
    return 1 if device == "cpu" and image_size <= 128 else None
