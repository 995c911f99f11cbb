"""The feature decomposing network (Section 3.1, Fig. 2).

x -> encoder -> (z_e^-, z_e^+) -> two EMA vector quantizers -> (z_q^-, z_q^+);
z_q^+ -> segmentation decoder -> ỹ (softmax), ŷ (argmax);
z_q^- -> SPADE image decoder -> x̂^+ = f(z_q^-, sg(ỹ)) and x̂^- = f(z_q^-, 0).

SPADE layout: the softmax of the S - 1 lesion classes (background dropped), so that a slice
the decoder sees as lesion-free gives nearly the same layout as the null input of x̂^-. This
is our reading of Fig. 3 ("ỹ multiplied by the segmentation mask"); eq. 8-9 and Algorithm 1
are unchanged.
"""

from typing import NamedTuple

import torch
from torch import nn

from fdn.losses import latent_loss
from fdn.model.blocks import init_he
from fdn.model.config import FDNConfig
from fdn.model.decoders import ImageDecoder, SegmentationDecoder, stage_widths
from fdn.model.encoder import Encoder
from fdn.model.quantizer import VectorQuantizer
from fdn.precision import at_least_fp32


class FDNOutput(NamedTuple):
    z_e_normal: torch.Tensor  # z_e^-: (B, D, h, w)
    z_e_abnormal: torch.Tensor  # z_e^+: (B, D, h, w)
    z_q_normal: torch.Tensor  # z_q^- (straight-through): (B, D, h, w)
    z_q_abnormal: torch.Tensor  # z_q^+ (straight-through): (B, D, h, w)
    codes_normal: torch.Tensor  # (B, h, w) int64
    codes_abnormal: torch.Tensor  # (B, h, w) int64
    seg_logits: torch.Tensor  # (B, S, H, W)
    seg_soft: torch.Tensor  # ỹ = softmax(seg_logits): (B, S, H, W)
    x_hat_plus: torch.Tensor  # x̂^+: (B, C, H, W)
    x_hat_minus: torch.Tensor  # x̂^-: (B, C, H, W)
    lat_loss: torch.Tensor  # L_lat = L_lat^- + L_lat^+ (eq. 3-4), scalar


class FDN(nn.Module):
    def __init__(self, config: FDNConfig):
        super().__init__()
        self.config = config
        c = config.channels
        n = config.num_downsamplings
        self.encoder = Encoder(
            config.in_channels, (c(32), c(64), c(128)), c(128), config.code_dim, n
        )
        self.quantizer_normal = VectorQuantizer(
            config.codebook_size, config.code_dim, config.ema_decay, config.ema_eps
        )
        self.quantizer_abnormal = VectorQuantizer(
            config.codebook_size, config.code_dim, config.ema_decay, config.ema_eps
        )
        widths = stage_widths(n, c)
        self.seg_decoder = SegmentationDecoder(config.code_dim, widths, c(128), config.num_classes)
        self.image_decoder = ImageDecoder(
            config.code_dim,
            widths,
            c(128),
            config.in_channels,
            config.num_classes - 1,
            config.spade_hidden,
        )
        init_he(self)

    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"FDN expects a torch.Tensor, got {type(x).__name__}")
        if (
            x.ndim != 4
            or x.shape[1] != cfg.in_channels
            or x.shape[2:] != (cfg.image_size, cfg.image_size)
        ):
            raise ValueError(
                f"FDN expects x of shape (B, {cfg.in_channels}, {cfg.image_size}, "
                f"{cfg.image_size}), got {tuple(x.shape)}"
            )

    @staticmethod
    def spade_layout(seg_soft: torch.Tensor) -> torch.Tensor:
        """ỹ: (B, S, H, W) -> the lesion-class probabilities (B, S-1, H, W)."""
        return seg_soft[:, 1:]

    def forward(self, x: torch.Tensor) -> FDNOutput:
        """x: (B, C, H, W) -> FDNOutput (updates the EMA codebooks when training)."""
        self._check_input(x)
        z_e_n, z_e_a = self.encoder(x)
        q_n = self.quantizer_normal(z_e_n)
        q_a = self.quantizer_abnormal(z_e_a)
        lat = latent_loss(z_e_n, q_n.z_q_raw, self.config.beta) + latent_loss(
            z_e_a, q_a.z_q_raw, self.config.beta
        )
        seg_logits = self.seg_decoder(q_a.z_q)
        seg_soft = torch.softmax(at_least_fp32(seg_logits), dim=1)
        layout = self.spade_layout(seg_soft).detach()  # sg(ỹ) of Algorithm 1
        # x̂^+ and x̂^- in one decoder pass over a doubled batch: (2B, D, h, w)
        both = self.image_decoder(
            torch.cat([q_n.z_q, q_n.z_q]), torch.cat([layout, torch.zeros_like(layout)])
        )
        x_hat_plus, x_hat_minus = both.chunk(2)
        return FDNOutput(
            z_e_normal=z_e_n,
            z_e_abnormal=z_e_a,
            z_q_normal=q_n.z_q,
            z_q_abnormal=q_a.z_q,
            codes_normal=q_n.codes,
            codes_abnormal=q_a.codes,
            seg_logits=seg_logits,
            seg_soft=seg_soft,
            x_hat_plus=x_hat_plus,
            x_hat_minus=x_hat_minus,
            lat_loss=lat,
        )

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, H, W) -> (codes_normal, codes_abnormal), each (B, h, w) int64.

        Runs in eval mode (the module's mode is restored afterwards); no decoder runs and the
        codebooks are not updated.
        """
        self._check_input(x)
        was_training = self.training
        self.eval()
        try:
            z_e_n, z_e_a = self.encoder(x)
            return self.quantizer_normal.lookup(z_e_n), self.quantizer_abnormal.lookup(z_e_a)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def decode(
        self, codes_normal: torch.Tensor, codes_abnormal: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pictures from codes (eval mode): codes (B, h, w) -> (image, seg_soft).

        Without abnormal codes the image is x̂^- and seg_soft is None; with them it is x̂^+
        and seg_soft is ỹ (B, S, H, W).
        """
        was_training = self.training
        self.eval()
        try:
            z_n = self.quantizer_normal.embed(codes_normal)
            if codes_abnormal is None:
                b, _, h, w = z_n.shape
                size = self.config.image_size
                zeros = z_n.new_zeros(b, self.config.num_classes - 1, size, size)
                return self.image_decoder(z_n, zeros), None
            seg_soft = torch.softmax(
                at_least_fp32(self.seg_decoder(self.quantizer_abnormal.embed(codes_abnormal))),
                dim=1,
            )
            return self.image_decoder(z_n, self.spade_layout(seg_soft)), seg_soft
        finally:
            self.train(was_training)

    def decode_normal(self, codes_normal: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) -> normal-appearing image x̂^- (B, C, H, W)."""
        return self.decode(codes_normal)[0]
