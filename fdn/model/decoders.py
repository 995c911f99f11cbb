"""Segmentation and image decoders of Table C.2: the same [Upsample + (SPADE-)ResBlock] stack.

Widths, right-aligned as in Table C.2: 128 at the latent grid and for every stage but the
last two, which have 64 and 32 (before the width multiplier).
"""

import torch
from torch import nn

from fdn.model.blocks import ResBlock, activation, upsample
from fdn.model.spade import SPADEResBlock


def stage_widths(n_stages: int, scale) -> list[int]:
    """Output width of each upsampling stage, e.g. 5 stages -> [128, 128, 128, 64, 32]."""
    return [scale(min(128, 32 * 2 ** (n_stages - 1 - i))) for i in range(n_stages)]


class SegmentationDecoder(nn.Module):
    """z_q^+: (B, D, h, w) -> logits (B, S, h·2^n, w·2^n)."""

    def __init__(self, code_dim: int, widths: list[int], top_width: int, num_classes: int):
        super().__init__()
        self.head = ResBlock(code_dim, top_width)
        blocks, ch = [], top_width
        for w in widths:
            blocks.append(ResBlock(ch, w))
            ch = w
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Sequential(nn.BatchNorm2d(ch), activation(), nn.Conv2d(ch, num_classes, 1))

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        h = self.head(z_q)
        for block in self.blocks:
            h = block(upsample(h))
        return self.out(h)


class ImageDecoder(nn.Module):
    """f(z_q^-, layout): z_q^-: (B, D, h, w), layout: (B, L, H, W) -> image (B, C, H, W).

    A zero layout gives the normal-appearing reconstruction x̂^-, the segmentation softmax
    the full reconstruction x̂^+ (Section 3.1.3).
    """

    def __init__(
        self,
        code_dim: int,
        widths: list[int],
        top_width: int,
        out_ch: int,
        label_nc: int,
        spade_hidden: int,
    ):
        super().__init__()
        self.head = ResBlock(code_dim, top_width)
        blocks, ch = [], top_width
        for w in widths:
            blocks.append(SPADEResBlock(ch, w, label_nc, spade_hidden))
            ch = w
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Sequential(nn.BatchNorm2d(ch), activation(), nn.Conv2d(ch, out_ch, 1))

    def forward(self, z_q: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
        h = self.head(z_q)
        for block in self.blocks:
            h = block(upsample(h), layout)
        return self.out(h)
