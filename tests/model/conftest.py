"""Fixtures of the model tests: tiny configs and an in-memory slice set with real structure."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from fdn.model import PRESETS, FDNConfig
from fdn.training.data import SliceSet

# The tiny models are too small to gain from threads, and the 2-core machine is shared:
# one thread avoids OpenMP spin-waiting against other processes.
torch.set_num_threads(1)


def tiny(**changes) -> FDNConfig:
    return replace(PRESETS["tiny"], **changes)


def blob_slices(n: int, size: int, seed: int = 0) -> SliceSet:
    """n slices of a disc-shaped "brain"; every second one has a two-class round lesion.

    Lesion position and size vary, so segmenting and reconstructing must be learned.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = torch.full((n, 4, size, size), -1.0)
    targets = torch.zeros(n, size, size, dtype=torch.uint8)
    for i in range(n):
        r = size * (0.35 + 0.05 * torch.rand(1, generator=g).item())
        brain = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < r * r
        images[i][:, brain] = torch.tensor([1.0, 0.5, -0.5, 0.2])[:, None]
        if i % 2:
            cy, cx = (torch.rand(2, generator=g) * size * 0.3 + size * 0.35).tolist()
            rr = size * (0.08 + 0.08 * torch.rand(1, generator=g).item())
            d2 = (yy - cy) ** 2 + (xx - cx) ** 2
            images[i][:, d2 < rr * rr] = torch.tensor([0.0, 2.0, 2.0, 3.0])[:, None]
            targets[i][d2 < rr * rr] = 2
            targets[i][d2 < (rr / 2) ** 2] = 3
    images += 0.05 * torch.randn(images.shape, generator=g)
    return SliceSet(
        images.half(), targets, np.array([f"c{i // 8}" for i in range(n)]), np.arange(n) % 8
    )


@pytest.fixture
def tiny_config():
    """Factory: the "tiny" preset with changes, e.g. tiny_config(latent_size=8)."""
    return tiny


@pytest.fixture
def make_slices():
    """Factory: blob_slices(n, size, seed)."""
    return blob_slices
