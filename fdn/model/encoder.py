"""Encoder of Table C.1: a shared trunk, then two branches of identical architecture.

The number of [ResBlock + StridedConv] stages follows from input and latent size: the trunk
takes up to two halvings (256 -> 64 in the paper), each branch the rest (64 -> H').
"""

import torch
from torch import nn

from fdn.model.blocks import ResBlock, StridedConv


def _branch(in_ch: int, width: int, code_dim: int, n_stages: int) -> nn.Sequential:
    """[ResBlock + StridedConv] × n_stages, ResBlock, ResBlock to D channels."""
    layers: list[nn.Module] = []
    ch = in_ch
    for _ in range(n_stages):
        layers += [ResBlock(ch, width), StridedConv(width, width, n_convs=2)]
        ch = width
    layers += [ResBlock(ch, width), ResBlock(width, code_dim)]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """x: (B, in_ch, H, W) -> (z_e^-, z_e^+), each (B, D, H', W').

    widths: the trunk's (32, 64, 128) and the branches' 128 of Table C.1, already scaled.
    """

    def __init__(
        self,
        in_ch: int,
        trunk_widths: tuple[int, int, int],
        branch_width: int,
        code_dim: int,
        num_downsamplings: int,
    ):
        super().__init__()
        n_trunk = min(2, num_downsamplings)
        layers: list[nn.Module] = [nn.Conv2d(in_ch, trunk_widths[0], 3, padding=1)]
        ch = trunk_widths[0]
        for j in range(n_trunk):  # Conv, StridedConv, ResBlock, StridedConv (Table C.1)
            if j > 0:
                layers.append(ResBlock(ch, ch))
            layers.append(StridedConv(ch, trunk_widths[j + 1]))
            ch = trunk_widths[j + 1]
        self.trunk = nn.Sequential(*layers)
        n_branch = num_downsamplings - n_trunk
        self.branch_normal = _branch(ch, branch_width, code_dim, n_branch)
        self.branch_abnormal = _branch(ch, branch_width, code_dim, n_branch)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.branch_normal(h), self.branch_abnormal(h)
