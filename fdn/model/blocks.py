"""Convolutional building blocks shared by the encoder and the decoders (Appendix C).

Every block takes plain channel counts; LeakyReLU is the activation of all networks (App. C).
"""

import torch
from torch import nn

LEAK = 0.2


def activation() -> nn.Module:
    return nn.LeakyReLU(LEAK, inplace=False)


class ResBlock(nn.Module):
    """Pre-activation residual block: two 3×3 convolutions, a 1×1 shortcut if widths differ.

    x: (B, in_ch, H, W) -> (B, out_ch, H, W)
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm_0 = nn.BatchNorm2d(in_ch)
        self.conv_0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm_1 = nn.BatchNorm2d(out_ch)
        self.conv_1 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.act = activation()
        self.shortcut = (
            nn.Conv2d(in_ch, out_ch, 1, bias=False) if in_ch != out_ch else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dx = self.conv_0(self.act(self.norm_0(x)))
        dx = self.conv_1(self.act(self.norm_1(dx)))
        return self.shortcut(x) + dx


class StridedConv(nn.Module):
    """Halve the resolution with a 3×3 stride-2 convolution, optionally followed by a 3×3 one.

    Table C.1 lists one convolution in the trunk and two in each branch.
    x: (B, in_ch, H, W) -> (B, out_ch, H/2, W/2)
    """

    def __init__(self, in_ch: int, out_ch: int, n_convs: int = 1):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)]
        for _ in range(n_convs - 1):
            layers += [
                nn.BatchNorm2d(out_ch),
                activation(),
                nn.Conv2d(out_ch, out_ch, 3, padding=1),
            ]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def upsample(x: torch.Tensor) -> torch.Tensor:
    """Bilinear ×2 upsampling (Section 4.3.1). x: (B, C, H, W) -> (B, C, 2H, 2W)"""
    return nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def init_he(module: nn.Module) -> None:
    """He (Kaiming) initialisation of every convolution (Section 4.3), for LeakyReLU."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, a=LEAK, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
