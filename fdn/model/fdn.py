"""The feature decomposing network (Section 3.1, Fig. 2).

x -> encoder -> (z_e^-, z_e^+) -> two EMA vector quantizers -> (z_q^-, z_q^+);
z_q^+ -> segmentation decoder -> ỹ (softmax), ŷ (argmax);
z_q^- -> SPADE image decoder -> x̂^+ = f(z_q^-, sg(ỹ)) and x̂^- = f(z_q^-, 0).

SPADE layout (`FDNConfig.spade_masked_layout`): as Fig. 3 draws it, ỹ multiplied by the
one-hot segmentation mask ŷ over all S classes, background included; models trained before
that option use the softmax of the S - 1 lesion classes (background dropped).

Null-code prior (`FDNConfig.null_code_weight` > 0, our addition): given the lesion mask while
training, abnormal code 0 is assigned to every grid cell without lesion and the abnormal
features of those cells are pulled towards it, so that healthy tissue has one abnormal code.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fdn.model.blocks import init_he
from fdn.model.config import FDNConfig
from fdn.model.decoders import ImageDecoder, SegmentationDecoder, stage_widths
from fdn.model.encoder import Encoder
from fdn.model.quantizer import NULL_CODE, VectorQuantizer, latent_loss, null_code_loss
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
    null_loss: torch.Tensor  # pull of lesion-free cells' z_e^+ to the null code (0 if unused)


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
            config.codebook_size,
            config.code_dim,
            config.ema_decay,
            config.ema_eps,
            null_at_origin=config.null_code_at_origin,
        )
        widths = stage_widths(n, c)
        self.seg_decoder = SegmentationDecoder(config.code_dim, widths, c(128), config.num_classes)
        self.image_decoder = ImageDecoder(
            config.code_dim,
            widths,
            c(128),
            config.in_channels,
            self.layout_channels,
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

    @property
    def layout_channels(self) -> int:
        """Channels of the SPADE layout: S (masked ỹ) or S - 1 (lesion softmax)."""
        s = self.config.num_classes
        return s if self.config.spade_masked_layout else s - 1

    def spade_layout(self, seg_soft: torch.Tensor) -> torch.Tensor:
        """ỹ: (B, S, H, W) -> the layout (B, layout_channels, H, W)."""
        if self.config.spade_masked_layout:
            hard = F.one_hot(seg_soft.argmax(1), seg_soft.shape[1]).permute(0, 3, 1, 2)
            return seg_soft * hard.to(seg_soft.dtype)
        return seg_soft[:, 1:]

    def null_cells(self, lesion_mask: torch.Tensor) -> torch.Tensor:
        """Grid cells without lesion: (B, 1, H, W) {0, 1} mask -> (B, h, w) bool."""
        h = self.config.latent_size
        return F.adaptive_max_pool2d(lesion_mask.float(), (h, h))[:, 0] == 0

    def decode_both(
        self, z_q_normal: torch.Tensor, layout: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂^+, x̂^-) = (f(z_q^-, layout), f(z_q^-, 0)), in one or two decoder passes."""
        null = torch.zeros_like(layout)
        if self.config.separate_decoder_passes:
            return self.image_decoder(z_q_normal, layout), self.image_decoder(z_q_normal, null)
        both = self.image_decoder(torch.cat([z_q_normal, z_q_normal]), torch.cat([layout, null]))
        plus, minus = both.chunk(2)
        return plus, minus

    def forward(self, x: torch.Tensor, lesion_mask: torch.Tensor | None = None) -> FDNOutput:
        """x: (B, C, H, W) -> FDNOutput (updates the EMA codebooks when training).

        lesion_mask: (B, 1, H, W) {0, 1}, the ground truth M^+; used only by the null-code
        prior while training (the codes of eval mode never depend on it).
        """
        self._check_input(x)
        z_e_n, z_e_a = self.encoder(x)
        q_n = self.quantizer_normal(z_e_n)
        null_cells = None
        if self.training and self.config.null_code_weight > 0 and lesion_mask is not None:
            null_cells = self.null_cells(lesion_mask)
        q_a = self.quantizer_abnormal(z_e_a, null_cells)
        lat = latent_loss(z_e_n, q_n.z_q_raw, self.config.beta) + latent_loss(
            z_e_a, q_a.z_q_raw, self.config.beta
        )
        if null_cells is None:
            null_loss = lat.new_zeros(())
        else:
            null_vector = self.quantizer_abnormal.codebook[NULL_CODE]
            null_loss = null_code_loss(z_e_a, null_vector, null_cells)
        seg_logits = self.seg_decoder(q_a.z_q)
        seg_soft = torch.softmax(at_least_fp32(seg_logits), dim=1)
        layout = self.spade_layout(seg_soft).detach()  # sg(ỹ) of Algorithm 1
        x_hat_plus, x_hat_minus = self.decode_both(q_n.z_q, layout)
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
            null_loss=null_loss,
        )

    def segment_codes(self, codes_abnormal: torch.Tensor) -> torch.Tensor:
        """Segmentation logits of abnormal code grids: (B, h, w) -> (B, S, H, W).

        The segmentation decoder alone, in the module's current mode; `encode` (for gating)
        and `decode` call it in eval mode.
        """
        return self.seg_decoder(self.quantizer_abnormal.embed(codes_abnormal))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, H, W) -> (codes_normal, codes_abnormal), each (B, h, w) int64.

        Runs in eval mode (the module's mode is restored afterwards); the codebooks are not
        updated. No decoder runs, except the segmentation decoder under
        `FDNConfig.gate_abnormal_codes`: cells where ŷ has no lesion pixel get the null code
        (`gate_codes`).
        """
        self._check_input(x)
        was_training = self.training
        self.eval()
        try:
            z_e_n, z_e_a = self.encoder(x)
            codes_n = self.quantizer_normal.lookup(z_e_n)
            codes_a = self.quantizer_abnormal.lookup(z_e_a)
            if self.config.gate_abnormal_codes:
                codes_a = self.gate_codes(codes_a)
            return codes_n, codes_a
        finally:
            self.train(was_training)

    def gate_codes(self, codes_abnormal: torch.Tensor) -> torch.Tensor:
        """Abnormal codes (B, h, w) with the null code on every cell where the segmentation
        decoded from them finds no lesion pixel (`FDNConfig.gate_abnormal_codes`).

        With `FDNConfig.gate_to_fixed_point` the gate is applied again to the gated grid until
        no cell changes: nulling a cell changes the context the decoder sees, and a lesion the
        decoder drew only from its neighbours may vanish. In the result every non-null cell is
        a lesion cell of the grid's own ŷ, as in training, where every cell without lesion in
        the truth is null. Each pass only adds null cells, so it stops after at most h·w
        passes; a slice stops as soon as it is stable, so the result does not depend on the
        batch it was encoded in.
        """
        codes = codes_abnormal.clone()
        active = torch.arange(codes.shape[0], device=codes.device)
        while active.numel():
            grids = codes[active]
            lesion = self.segment_codes(grids).argmax(1, keepdim=True) > 0
            gated = grids.masked_fill(self.null_cells(lesion), NULL_CODE)
            codes[active] = gated
            if not self.config.gate_to_fixed_point:
                break
            active = active[(gated != grids).flatten(1).any(1)]
        return codes

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
                zeros = z_n.new_zeros(b, self.layout_channels, size, size)
                return self.image_decoder(z_n, zeros), None
            seg_soft = torch.softmax(at_least_fp32(self.segment_codes(codes_abnormal)), dim=1)
            return self.image_decoder(z_n, self.spade_layout(seg_soft)), seg_soft
        finally:
            self.train(was_training)

    def decode_normal(self, codes_normal: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) -> normal-appearing image x̂^- (B, C, H, W)."""
        return self.decode(codes_normal)[0]
