import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from fdn.model.quantizer import latent_loss
from fdn.training.losses import (
    critic_loss,
    focal_loss,
    generalized_dice_loss,
    reconstruction_loss,
    regularization_loss,
    ssim,
)


def test_generalized_dice_by_hand():
    # one 2×2 image, classes {0, 1}; y_1 = top-left pixel
    p1 = torch.tensor([[0.8, 0.2], [0.1, 0.1]])
    probs = torch.stack([1 - p1, p1])[None]
    y1 = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    target = torch.stack([1 - y1, y1])[None]
    # w_0 = 1/3², w_1 = 1/1²; ∩_0 = 0.8 + 0.9 + 0.9, ∩_1 = 0.8
    # |ŷ_0| + |y_0| = 2.8 + 3, |ŷ_1| + |y_1| = 1.2 + 1
    expected = 1 - 2 * (2.6 / 9 + 0.8) / (5.8 / 9 + 2.2)
    assert generalized_dice_loss(probs, target).item() == pytest.approx(expected, rel=1e-6)
    assert generalized_dice_loss(target, target).item() == pytest.approx(0.0, abs=1e-7)


def test_generalized_dice_empty_class_gets_largest_weight():
    p1 = torch.tensor([[0.8, 0.2], [0.1, 0.1]])
    p2 = torch.full((2, 2), 0.05)
    probs = torch.stack([1 - p1 - p2, p1, p2])[None]
    y1 = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    target = torch.stack([1 - y1, y1, torch.zeros(2, 2)])[None]
    # class 2 is absent: weight 1 (= w_1, the largest finite weight); ∩_2 = 0, |ŷ_2| = 0.2
    p0 = 1 - p1 - p2
    i0 = float((p0 * (1 - y1)).sum())
    d0 = float(p0.sum()) + 3
    expected = 1 - 2 * (i0 / 9 + 0.8) / (d0 / 9 + 2.2 + 0.2)
    loss = generalized_dice_loss(probs, target)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_focal_by_hand():
    # two pixels, true classes 0 and 1, probabilities of the true class 0.8 and 0.25
    probs = torch.tensor([[0.8, 0.75], [0.2, 0.25]])  # (S=2, pixels)
    logits = probs.log().reshape(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    expected = -((0.2**2) * math.log(0.8) + (0.75**2) * math.log(0.25)) / 2
    assert focal_loss(logits, target, gamma=2.0).item() == pytest.approx(expected, rel=1e-6)
    # γ = 0 is cross-entropy
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(ce.item(), rel=1e-6)


def test_ssim_matches_skimage():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 3, 24, 20)).astype(np.float64)
    b = (a + rng.normal(scale=0.5, size=a.shape)).astype(np.float64)
    ours = ssim(torch.tensor(a), torch.tensor(b), data_range=8.0)
    assert ours.dtype == torch.float64  # float64 in, float64 throughout: no float32 rounding
    ours = ours.item()
    ref = np.mean(
        [
            structural_similarity(
                a[i, c],
                b[i, c],
                data_range=8.0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
            for i in range(2)
            for c in range(3)
        ]
    )
    # both sides in float64; the moments subtract terms of size ~data_range², so reordering the
    # window sums may cost ~1e3 ulps of that size: far below the 1e-9 allowed
    assert ours == pytest.approx(ref, abs=1e-9)
    assert ssim(torch.tensor(a), torch.tensor(a), 8.0).item() == pytest.approx(1.0, abs=1e-12)


def test_masked_reconstruction_by_hand():
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(size=(1, 4, 16, 16)), dtype=torch.float64)
    mask = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    mask[..., 4:8, 4:12] = 1  # 32 of 256 pixels lesion
    # x̂^- wrong only inside the lesion: eq. 8 sees nothing
    x_minus = x + 5 * mask
    rec_minus, rec_plus = reconstruction_loss(x, x, x_minus, mask, 8.0)
    assert rec_minus.item() == pytest.approx(0.0, abs=1e-12)
    assert rec_plus.item() == pytest.approx(0.0, abs=1e-12)
    # x̂^+ = x + 1 everywhere: eq. 9 = 1 + (1 - SSIM(x+1, x)) + 32/256 + (1 - SSIM(M(x+1), Mx))
    rec_minus, rec_plus = reconstruction_loss(x, x + 1, x, mask, 8.0)

    def sk(a, b):
        return np.mean(
            [
                structural_similarity(
                    a[0, c].numpy(),
                    b[0, c].numpy(),
                    data_range=8.0,
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=False,
                )
                for c in range(4)
            ]
        )

    expected = 1 + (1 - sk(x + 1, x)) + 32 / 256 + (1 - sk(mask * (x + 1), mask * x))
    assert rec_plus.item() == pytest.approx(expected, abs=1e-9)
    assert rec_minus.item() == pytest.approx(0.0, abs=1e-12)


class LinearCritic(torch.nn.Module):
    """g(z) = <w, z> + b: its gradient is w everywhere, so eq. 11 is computable by hand."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())
        self.b = b

    def forward(self, z):
        return (z * self.w).flatten(1).sum(1) + self.b


def test_wgan_gp_by_hand():
    w = torch.tensor([[[0.5]], [[1.0]]])  # (D=2, 1, 1)
    g = LinearCritic(w, 0.3)
    z_h = torch.tensor([[1.0, 2.0], [0.0, 1.0]]).reshape(2, 2, 1, 1)
    z_d = torch.tensor([[3.0, 0.0], [1.0, 1.0]]).reshape(2, 2, 1, 1)
    loss, d_w, penalty = critic_loss(g, z_h, z_d, lambda_gp=10.0)
    # g(z_h) = [2.5, 1.0] + 0.3, g(z_d) = [1.5, 1.5] + 0.3 -> d_W = 1.5 - 1.75 = -0.25
    assert d_w.item() == pytest.approx(-0.25)
    # ‖∇g‖²₂ = 0.25 + 1 = 1.25 -> (1.25 - 1)² = 0.0625
    assert penalty.item() == pytest.approx(0.0625)
    assert loss.item() == pytest.approx(-0.25 + 10 * 0.0625)
    assert regularization_loss(g, z_d).item() == pytest.approx(-1.8)
    loss.backward()
    # ∂/∂w: mean z_d - mean z_h + 10 · 2 (‖w‖² - 1) · 2w
    expected = (z_d.mean(0) - z_h.mean(0)) + 10 * 2 * 0.25 * 2 * w
    torch.testing.assert_close(g.w.grad, expected)


def test_latent_loss_stop_gradients_of_eq3():
    z_e = torch.tensor([[1.0, 2.0], [3.0, -1.0]], requires_grad=True)
    e = torch.tensor([[0.0, 1.0], [2.0, 1.0]], requires_grad=True)
    beta = 0.25
    loss = latent_loss(z_e, e, beta)
    diff = (z_e - e).detach()
    assert loss.item() == pytest.approx((1 + beta) * float((diff**2).mean()))
    loss.backward()
    n = diff.numel()
    # first term ‖sg[z_e] - e‖² moves only e, the commitment term only z_e
    torch.testing.assert_close(e.grad, -2 * diff / n)
    torch.testing.assert_close(z_e.grad, beta * 2 * diff / n)
