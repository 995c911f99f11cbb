"""In-plane resizing against PyTorch's interpolate (an independent implementation)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fdn.data.resize import bilinear_weights, resize_images, resize_labels

U32 = np.finfo(np.float32).eps / 2  # unit roundoff of float32


def resize_error_bound(h: int, w: int, size: int, max_abs: float) -> float:
    """Absolute bound on |resize_images(x) - exact| for float32 x with |x| <= max_abs.

    resize_images computes rows @ x @ cols.T in float32. Each weight is rounded once to float32
    (relative error u); a row of the first product sums k_r nonzero terms and one of the second
    k_c (adding an exact zero is exact). With nonnegative weights summing to 1, Higham's bound
    for a sum of n products (gamma_n ~ n·u times the sum of |terms|) gives
    (k_r + k_c + 2 + 2) · u · max|x|; a factor 1.01 covers the second-order terms.
    """
    k_r = int((bilinear_weights(h, size) > 0).sum(1).max())
    k_c = int((bilinear_weights(w, size) > 0).sum(1).max())
    return 1.01 * (k_r + k_c + 4) * U32 * max_abs


@pytest.mark.parametrize(
    "h, w, size",
    [(240, 240, 64), (240, 200, 64), (32, 48, 64), (64, 64, 63), (17, 23, 5), (40, 40, 40)],
)
def test_bilinear_matches_torch_antialiased_bilinear(h, w, size):
    x = np.random.default_rng(0).standard_normal((3, 2, h, w)).astype(np.float32)
    # The reference runs in float64, so its own rounding (~1e-16) is negligible next to ours.
    reference = F.interpolate(
        torch.from_numpy(x.astype(np.float64)),
        size=(size, size),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    ).numpy()
    tol = resize_error_bound(h, w, size, float(np.abs(x).max()))
    np.testing.assert_allclose(resize_images(x, size), reference, rtol=0, atol=tol)


@pytest.mark.parametrize("h, w, size", [(240, 240, 64), (30, 50, 64), (7, 9, 3)])
def test_labels_match_torch_nearest_exact(h, w, size):
    y = np.random.default_rng(1).integers(0, 7, (2, h, w)).astype(np.uint8)
    reference = F.interpolate(
        torch.from_numpy(y[:, None].astype(np.float32)), size=(size, size), mode="nearest-exact"
    )[:, 0].numpy()
    out = resize_labels(y, size)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, reference)


def test_resizing_a_constant_keeps_it_and_rows_sum_to_one():
    weights = bilinear_weights(240, 64)
    # float64 weights normalised to sum 1, then each rounded to float32: the float64 sum of a
    # row is off by at most (nonzeros per row) · u
    nonzero = int((weights > 0).sum(1).max())
    np.testing.assert_allclose(weights.astype(np.float64).sum(1), 1, rtol=0, atol=nonzero * U32)
    np.testing.assert_allclose(
        resize_images(np.full((5, 37), 3.5, np.float32), 16),
        3.5,
        rtol=0,
        atol=resize_error_bound(5, 37, 16, 3.5),
    )
