"""Vector quantizer with an exponential-moving-average codebook (eq. 1-4), and its losses.

The codebook is not a parameter: it follows the encoder outputs assigned to each code by EMA
with Laplace smoothing of the cluster sizes (Kaiser et al. 2018), in small named steps under
`no_grad` like vector-quantize-pytorch. Gradients pass the lookup straight through.
Codes that stop being used decay towards the zero vector, which is what the paper measures as
codebook compactness (4.4.4).
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fdn.precision import at_least_fp32

NULL_CODE = 0  # the code of cells without lesion under the null-code prior


class Quantized(NamedTuple):
    z_q: torch.Tensor  # (B, D, h, w) straight-through: value of e_k, gradient of z_e
    codes: torch.Tensor  # (B, h, w) int64 indices k of eq. 1
    z_q_raw: torch.Tensor  # (B, D, h, w) e_k without straight-through (for the latent loss)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour lookup into a K × D codebook, EMA-updated while training.

    Buffers: `codebook` (K, D) e_k; `cluster_size` (K,) EMA of assignment counts N_k;
    `embed_avg` (K, D) EMA of the sums of assigned vectors m_k; `initted` whether the codebook
    was initialised from data (on the first training batch, from random encoder outputs, so
    that codes start where the data is).
    """

    # buffers (register_buffer), declared for type checkers
    codebook: torch.Tensor
    cluster_size: torch.Tensor
    embed_avg: torch.Tensor
    initted: torch.Tensor

    def __init__(
        self,
        codebook_size: int,
        code_dim: int,
        decay: float = 0.99,
        eps: float = 1e-5,
        null_at_origin: bool = False,
    ):
        """null_at_origin: code NULL_CODE is the zero vector, before and after every EMA step."""
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.decay, self.eps = decay, eps
        self.null_at_origin = null_at_origin
        embed = torch.randn(codebook_size, code_dim)
        if null_at_origin:
            embed[NULL_CODE] = 0.0
        self.register_buffer("codebook", embed)
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_avg", embed.clone())
        self.register_buffer("initted", torch.tensor(False))

    def lookup(self, z_e: torch.Tensor, skip_null: bool = False) -> torch.Tensor:
        """Eq. 1: index of the nearest code vector. z_e: (B, D, h, w) -> (B, h, w) int64

        Always in fp32, autocast or not: under bf16 autocast the distance matmul would run in
        bf16 and pick another code than training's fp32 assignment. skip_null: choose among
        codes 1..K-1 only (the lesion cells of the null-code prior).
        """
        b, d, h, w = z_e.shape
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            flat = at_least_fp32(z_e.permute(0, 2, 3, 1).reshape(-1, d))  # (B·h·w, D)
            codebook = at_least_fp32(self.codebook).to(flat.dtype)
            dist = (
                flat.pow(2).sum(1, keepdim=True)
                - 2 * flat @ codebook.t()
                + codebook.pow(2).sum(1)[None, :]
            )  # (B·h·w, K) squared Euclidean distances
            if skip_null:
                dist[:, NULL_CODE] = torch.inf
            return dist.argmin(dim=1).view(b, h, w)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Eq. 2: code vectors of indices. codes: (B, h, w) -> (B, D, h, w)"""
        return F.embedding(codes, self.codebook).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def init_from_data(self, flat: torch.Tensor) -> None:
        """Set the codebook to K random rows of flat: (N, D) (drawn with replacement if N < K)."""
        n = flat.shape[0]
        idx = torch.randperm(n, device=flat.device)[: self.codebook_size]
        if n < self.codebook_size:
            idx = torch.randint(0, n, (self.codebook_size,), device=flat.device)
        self.codebook.copy_(flat[idx])
        self.embed_avg.copy_(flat[idx])
        self.cluster_size.fill_(1.0)
        self._pin_null()
        self.initted.fill_(True)

    @torch.no_grad()
    def _pin_null(self) -> None:
        if self.null_at_origin:
            self.codebook[NULL_CODE] = 0.0
            self.embed_avg[NULL_CODE] = 0.0

    @torch.no_grad()
    def ema_update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        """One EMA step of Kaiser et al. (2018). flat: (N, D) encoder outputs, codes: (N,)

        N_k <- γ N_k + (1-γ) n_k;  m_k <- γ m_k + (1-γ) Σ_{i: k_i = k} z_i;
        Ñ_k = (N_k + ε) / (Σ N + K ε) · Σ N;  e_k = m_k / Ñ_k
        """
        onehot = F.one_hot(codes, self.codebook_size).type(flat.dtype)  # (N, K)
        counts = onehot.sum(0)  # (K,)
        sums = onehot.t() @ flat  # (K, D)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        self.codebook.copy_(self.embed_avg / smoothed[:, None])
        self._pin_null()

    def forward(self, z_e: torch.Tensor, null_cells: torch.Tensor | None = None) -> Quantized:
        """z_e: (B, D, h, w) -> Quantized; updates the codebook when training.

        null_cells: (B, h, w) bool, the cells assigned the null code 0 whatever their nearest
        code (the null-code prior); every other cell takes its nearest code among 1..K-1.
        None: every cell takes its nearest code (eq. 1).
        """
        if z_e.shape[1] != self.code_dim:
            raise ValueError(f"expected {self.code_dim} channels, got shape {tuple(z_e.shape)}")
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            z_e32 = at_least_fp32(z_e)
            if self.training:
                flat = z_e32.detach().permute(0, 2, 3, 1).reshape(-1, self.code_dim)
                if not bool(self.initted):
                    self.init_from_data(flat)
            if null_cells is None:
                codes = self.lookup(z_e32)
            else:
                nearest = self.lookup(z_e32, skip_null=True)
                codes = torch.where(null_cells, torch.zeros_like(nearest), nearest)
            z_q_raw = self.embed(codes)  # e_k before this step's update, as in VQ-VAE
            if self.training:
                self.ema_update(flat, codes.reshape(-1))
            z_q = z_e32 + (z_q_raw - z_e32).detach()  # straight-through estimator
        return Quantized(z_q=z_q, codes=codes, z_q_raw=z_q_raw)


def latent_loss(z_e: torch.Tensor, e: torch.Tensor, beta: float) -> torch.Tensor:
    """L_lat = ‖sg[z_e] - e‖²₂ + β ‖z_e - sg[e]‖²₂ (eq. 3).

    z_e: (B, D, h, w) encoder output; e: (B, D, h, w) the selected code vectors e_k.
    With an EMA codebook `e` carries no gradient, so the first term only reports its value.
    """
    return F.mse_loss(e, z_e.detach()) + beta * F.mse_loss(z_e, e.detach())


def null_code_loss(
    z_e: torch.Tensor, null_vector: torch.Tensor, cells: torch.Tensor
) -> torch.Tensor:
    """Pull of the abnormal features of lesion-free cells to the null code (our addition).

    ‖z_e - sg[e_0]‖²₂ averaged over the D features of the cells where ``cells`` is True, 0
    without such cells. z_e: (B, D, h, w); null_vector e_0: (D,); cells: (B, h, w) bool.
    """
    diff = (z_e - null_vector.detach()[None, :, None, None]).pow(2).mean(1)  # (B, h, w)
    n = cells.sum()
    return (diff * cells).sum() / n.clamp_min(1)
