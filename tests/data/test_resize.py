"""In-plane resizing against PyTorch's interpolate (an independent implementation)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fdn.data.resize import bilinear_weights, resize_images, resize_labels


@pytest.mark.parametrize("h, w, size", [(240, 240, 64), (240, 200, 64), (32, 48, 64),
                                        (64, 64, 63), (17, 23, 5), (40, 40, 40)])
def test_bilinear_matches_torch_antialiased_bilinear(h, w, size):
    x = np.random.default_rng(0).standard_normal((3, 2, h, w)).astype(np.float32)
    reference = F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear",
                              antialias=True, align_corners=False).numpy()
    np.testing.assert_allclose(resize_images(x, size), reference, atol=1e-4)


@pytest.mark.parametrize("h, w, size", [(240, 240, 64), (30, 50, 64), (7, 9, 3)])
def test_labels_match_torch_nearest_exact(h, w, size):
    y = np.random.default_rng(1).integers(0, 7, (2, h, w)).astype(np.uint8)
    reference = F.interpolate(torch.from_numpy(y[:, None].astype(np.float32)), size=(size, size),
                              mode="nearest-exact")[:, 0].numpy()
    out = resize_labels(y, size)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, reference)


def test_resizing_a_constant_keeps_it_and_rows_sum_to_one():
    assert np.allclose(bilinear_weights(240, 64).sum(1), 1)
    np.testing.assert_allclose(resize_images(np.full((5, 37), 3.5, np.float32), 16), 3.5,
                               rtol=1e-6)
