"""Spatially adaptive normalization (SPADE, Park et al. 2019) and the SPADE residual block.

The semantic layout is the segmentation decoder's softmax ỹ restricted to the lesion classes
(see `fdn.model.fdn`), or zeros for the normal-appearing reconstruction x̂^-.
"""

import torch
import torch.nn.functional as F
from torch import nn

from fdn.model.blocks import activation


class SPADE(nn.Module):
    """Parameter-free batch norm, then a per-pixel scale and shift predicted from a label map.

    x: (B, norm_nc, H, W), label: (B, label_nc, H0, W0) with H0 >= H -> (B, norm_nc, H, W)
    """

    def __init__(self, norm_nc: int, label_nc: int, hidden: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(norm_nc, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, 3, padding=1)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if label.shape[-2:] != x.shape[-2:]:
            # Fig. 3: the layout is downsampled to each layer's resolution (area = mean pooling).
            label = F.adaptive_avg_pool2d(label, (int(x.shape[-2]), int(x.shape[-1])))
        actv = self.mlp_shared(label)
        return self.norm(x) * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResBlock(nn.Module):
    """SPADE residual block of Park et al.: two 3×3 convolutions plus a learned 1×1 shortcut.

    x: (B, in_ch, H, W), label: (B, label_nc, H0, W0) -> (B, out_ch, H, W)
    """

    def __init__(self, in_ch: int, out_ch: int, label_nc: int, hidden: int):
        super().__init__()
        mid = min(in_ch, out_ch)
        self.norm_0 = SPADE(in_ch, label_nc, hidden)
        self.conv_0 = nn.Conv2d(in_ch, mid, 3, padding=1)
        self.norm_1 = SPADE(mid, label_nc, hidden)
        self.conv_1 = nn.Conv2d(mid, out_ch, 3, padding=1)
        self.norm_s = SPADE(in_ch, label_nc, hidden)
        self.conv_s = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.act = activation()

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, label))
        dx = self.conv_0(self.act(self.norm_0(x, label)))
        dx = self.conv_1(self.act(self.norm_1(dx, label)))
        return x_s + dx
