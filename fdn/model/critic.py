"""Critic g of the distribution matching (Table C.3), a WGAN-GP critic on normal codes.

No normalisation layers: the gradient penalty is taken per sample (Gulrajani et al. 2017).
"""

import math

import torch
from torch import nn

from fdn.model.blocks import LEAK, init_he


class Critic(nn.Module):
    """z: (B, D, h, w) -> g(z): (B,). log2(h) 4×4 stride-2 convolutions to 1×1, then two 1×1."""

    def __init__(self, code_dim: int, latent_size: int, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        ch = code_dim
        for _ in range(round(math.log2(latent_size))):
            layers += [nn.Conv2d(ch, width, 4, stride=2, padding=1), nn.LeakyReLU(LEAK)]
            ch = width
        layers += [nn.Conv2d(ch, width, 1), nn.LeakyReLU(LEAK), nn.Conv2d(width, 1, 1)]
        self.net = nn.Sequential(*layers)
        init_he(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).flatten()  # (B, 1, 1, 1) -> (B,)
