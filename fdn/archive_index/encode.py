"""Encode image slices into code indices with a trained FDN."""

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
) -> tuple[np.ndarray, np.ndarray]:
    """Normal and abnormal code indices of each slice.

    images: (N, C, H, W) float32 preprocessed slices at the model's input size
    -> (codes_normal, codes_abnormal), each (N, h, w) uint16 in [0, K).
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
    model = model.to(dev)
    n, h = images.shape[0], cfg.latent_size
    out_n = np.empty((n, h, h), np.uint16)
    out_a = np.empty((n, h, h), np.uint16)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else None
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc="encode", unit="batch"):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size], np.float32))
        x = x.to(dev).contiguous(memory_format=torch.channels_last)
        if amp is not None:
            with amp:
                c_n, c_a = model.encode(x)
        else:
            c_n, c_a = model.encode(x)
        out_n[start : start + len(x)] = c_n.cpu().numpy().astype(np.uint16)
        out_a[start : start + len(x)] = c_a.cpu().numpy().astype(np.uint16)
    return out_n, out_a
