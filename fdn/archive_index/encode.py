"""Encode image slices into code indices with a trained FDN.

Codes are argmins over codebook distances, so a rounding difference can flip a near tie: an index
must never mix codes made with different arithmetic. ``fp32`` (the default, on any device) runs
IEEE float32 throughout: on CUDA with TF32 off and cuDNN's deterministic algorithms, so a GPU
gives the same codes run after run and as close to the CPU's as float32 allows. ``bf16`` (CUDA
autocast, faster) is an explicit choice that the build records (`fdn.archive_index.build`)."""

import contextlib

import numpy as np
import torch
from tqdm import tqdm

from fdn.device import resolve_device
from fdn.model import FDN


def encode_images(
    model: FDN,
    images: np.ndarray,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = False,
    precision: str = "fp32",
) -> tuple[np.ndarray, np.ndarray]:
    """Normal and abnormal code indices of each slice.

    images: (N, C, H, W) float32 preprocessed slices at the model's input size
    -> (codes_normal, codes_abnormal), each (N, h, w) uint16 in [0, K).
    precision: "fp32" (IEEE float32 on any device) or "bf16" (CUDA autocast).
    """
    if not isinstance(model, FDN):
        raise TypeError(f"encode_images expects an FDN, got {type(model).__name__}")
    if not isinstance(images, np.ndarray):
        raise TypeError(f"images must be a numpy array, got {type(images).__name__}")
    cfg = model.config
    if images.ndim != 4 or images.shape[1:] != (cfg.in_channels, cfg.image_size, cfg.image_size):
        raise ValueError(
            f"images must be (N, {cfg.in_channels}, {cfg.image_size}, "
            f"{cfg.image_size}) for this model, got {images.shape}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if cfg.codebook_size > 65536:
        raise ValueError("codes do not fit uint16 for K > 65536")
    dev = torch.device(resolve_device(device))
    arithmetic = encode_arithmetic(dev, precision)
    model = model.to(dev)
    n, h = images.shape[0], cfg.latent_size
    out_n = np.empty((n, h, h), np.uint16)
    out_a = np.empty((n, h, h), np.uint16)
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc="encode", unit="batch"):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size], np.float32))
        x = x.to(dev).contiguous(memory_format=torch.channels_last)
        with arithmetic():
            c_n, c_a = model.encode(x)
        out_n[start : start + len(x)] = c_n.cpu().numpy().astype(np.uint16)
        out_a[start : start + len(x)] = c_a.cpu().numpy().astype(np.uint16)
    return out_n, out_a


PRECISIONS = ("fp32", "bf16")


def encode_arithmetic(device: torch.device, precision: str):
    """A context-manager factory that runs the encoder in `precision` on `device`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16":
        if device.type != "cuda":
            raise ValueError(f"precision bf16 runs on a CUDA device; got {device}. Use fp32.")
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type != "cuda":
        return contextlib.nullcontext
    return _ieee_float32_on_cuda


@contextlib.contextmanager
def _ieee_float32_on_cuda():
    """TF32 off for convolutions and matmuls (cuDNN allows it by default for convolutions) and
    deterministic cuDNN algorithms, restored afterwards."""
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
        ) = saved
