"""The training losses of the feature decomposing network, eq. 5-12 of the paper.

The latent loss (eq. 3) and the null-code pull are the quantizer's: the model's forward
computes them, so they live in `fdn.model.quantizer`.

Conventions (the paper writes norms; we average so the λ's do not depend on image size):
‖a - b‖²₂ is the mean of squared differences over all elements; SSIM is the mean over the
valid (unpadded) positions of an 11×11 Gaussian window, σ = 1.5, per channel (Wang et al.
2004; identical to skimage's `structural_similarity(gaussian_weights=True,
use_sample_covariance=False)` on the same window).
"""

import torch
import torch.nn.functional as F

from fdn.precision import at_least_fp32

# --- eq. 5-7: segmentation loss -------------------------------------------------------------


def generalized_dice_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_dice = 1 - 2 Σ_s w_s Σ ŷ_s y_s / Σ_s w_s Σ (ŷ_s + y_s), w_s = 1/(Σ y_s)² (eq. 5).

    probs: (B, S, H, W) softmax ỹ (the soft ŷ); target: (B, S, H, W) one-hot y.
    Sums run over the whole batch (Sudre et al. 2017). A class absent from the batch has an
    infinite weight; it gets the largest finite weight of the present classes instead (as
    MONAI does), so false positives of an absent class are still penalised.
    """
    dims = (0, 2, 3)
    ref = target.sum(dims)  # (S,)
    w = 1.0 / ref.pow(2)
    finite = torch.isfinite(w)
    w = torch.where(finite, w, w[finite].max() if bool(finite.any()) else torch.ones_like(w))
    intersect = (probs * target).sum(dims)
    denom = (probs + target).sum(dims)
    return 1.0 - 2.0 * (w * intersect).sum() / (w * denom).sum().clamp_min(1e-12)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """L_focal = -(1/N) Σ_pixels Σ_s y_s (1 - ỹ_s)^γ log ỹ_s (eq. 6), averaged over the batch.

    logits: (B, S, H, W); target: (B, H, W) int64 class indices.
    """
    log_p = F.log_softmax(at_least_fp32(logits), dim=1).gather(1, target[:, None]).squeeze(1)
    return -((1 - log_p.exp()).pow(gamma) * log_p).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """L_seg = L_dice + L_focal (eq. 7). logits: (B, S, H, W), target: (B, H, W) int64."""
    probs = torch.softmax(at_least_fp32(logits), dim=1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    return generalized_dice_loss(probs, onehot) + focal_loss(logits, target, gamma)


# --- eq. 8-10: reconstruction loss ----------------------------------------------------------


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    a: torch.Tensor, b: torch.Tensor, data_range: float, win_size: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Mean structural similarity of a, b: (B, C, H, W) (H, W >= win_size), a scalar.

    SSIM = (2 μa μb + C1)(2 σab + C2) / ((μa² + μb² + C1)(σa² + σb² + C2)),
    C1 = (0.01 L)², C2 = (0.03 L)², local moments under a separable Gaussian window.
    """
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"ssim expects two (B, C, H, W) tensors of one shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    a, b = at_least_fp32(a), at_least_fp32(b)
    ch = a.shape[1]
    g = _gaussian_window(win_size, sigma, a.device, a.dtype)
    kh = g.view(1, 1, -1, 1).repeat(ch, 1, 1, 1)
    kw = g.view(1, 1, 1, -1).repeat(ch, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kh, groups=ch), kw, groups=ch)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    s = num / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


def l2_ssim_loss(x_hat: torch.Tensor, x: torch.Tensor, data_range: float) -> torch.Tensor:
    """‖x̂ - x‖²₂ + (1 - SSIM(x̂, x)), the unit of eq. 8-9. x_hat, x: (B, C, H, W)."""
    return F.mse_loss(at_least_fp32(x_hat), at_least_fp32(x)) + (1 - ssim(x_hat, x, data_range))


def reconstruction_loss(
    x: torch.Tensor,
    x_hat_plus: torch.Tensor,
    x_hat_minus: torch.Tensor,
    lesion_mask: torch.Tensor,
    data_range: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_rec^-, L_rec^+) of eq. 8-9; L_rec = their sum (eq. 10).

    x, x_hat_*: (B, C, H, W); lesion_mask M^+: (B, 1, H, W) {0, 1}, broadcast over channels.
    """
    m_plus = lesion_mask.to(x.dtype)
    m_minus = 1 - m_plus
    rec_minus = l2_ssim_loss(m_minus * x_hat_minus, m_minus * x, data_range)
    rec_plus = l2_ssim_loss(x_hat_plus, x, data_range) + l2_ssim_loss(
        m_plus * x_hat_plus, m_plus * x, data_range
    )
    return rec_minus, rec_plus


# --- eq. 11-12: distribution matching -------------------------------------------------------


def critic_loss(
    critic,
    z_h: torch.Tensor,
    z_d: torch.Tensor,
    lambda_gp: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_critic = d_W + λ_gp (‖∇_{z_m} g(z_m)‖²₂ - 1)² (eq. 11) -> (loss, d_W, penalty).

    z_h, z_d: (n, D, h, w) detached normal codes of healthy and diseased slices, paired row by
    row; d_W = mean g(z_d) - mean g(z_h); z_m = ε z_h + (1 - ε) z_d with one ε ~ U[0, 1] per
    pair. The penalty squares the gradient norm as eq. 11 is written (Gulrajani et al. use
    the plain norm; both are minimal at norm 1).
    """
    if z_h.shape != z_d.shape:
        raise ValueError(
            f"critic_loss pairs z_h and z_d row by row; got {tuple(z_h.shape)} "
            f"and {tuple(z_d.shape)}"
        )
    d_w = critic(z_d).mean() - critic(z_h).mean()
    # ε is drawn where the generator lives (the trainer's is a CPU generator, so a resumed run
    # repeats it on any device) and then moved: torch refuses a CPU generator for a CUDA draw
    eps_device = generator.device if generator is not None else z_h.device
    eps = torch.rand(z_h.shape[0], 1, 1, 1, device=eps_device, generator=generator)
    eps = eps.to(device=z_h.device, dtype=z_h.dtype)
    z_m = (eps * z_h + (1 - eps) * z_d).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(z_m).sum(), z_m, create_graph=True)
    sq_norm = grad.flatten(1).pow(2).sum(1)  # (n,) ‖∇g‖²₂ per pair
    penalty = (sq_norm - 1).pow(2).mean()
    return d_w + lambda_gp * penalty, d_w, penalty


def regularization_loss(critic, z_d: torch.Tensor) -> torch.Tensor:
    """L_reg = -g(z_d^-) (eq. 12), averaged over the diseased slices. z_d: (n, D, h, w)."""
    return -critic(z_d).mean()


def lesion_mask_from_target(target: torch.Tensor) -> torch.Tensor:
    """M^+ from class indices: target (B, H, W) int64 -> (B, 1, H, W) float {0, 1}."""
    return (target > 0).float()[:, None]


__all__ = [
    "critic_loss",
    "focal_loss",
    "generalized_dice_loss",
    "l2_ssim_loss",
    "lesion_mask_from_target",
    "reconstruction_loss",
    "regularization_loss",
    "segmentation_loss",
    "ssim",
]
