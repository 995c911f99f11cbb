"""Encoding arithmetic: IEEE float32 by default on every device, bf16 only as a CUDA choice."""

import numpy as np
import pytest
import torch

from fdn.archive_index.encode import encode_images
from fdn.model import FDN


@pytest.fixture(scope="module")
def model_and_images():
    from tests.model.conftest import blob_slices, tiny

    torch.manual_seed(0)
    cfg = tiny()
    model = FDN(cfg).eval()
    images = blob_slices(6, cfg.image_size).images.float().numpy()
    return model, images


def test_unknown_precision_and_bf16_on_the_cpu_are_refused(model_and_images):
    model, images = model_and_images
    with pytest.raises(ValueError, match="precision must be one of"):
        encode_images(model, images, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="bf16 runs on a CUDA device"):
        encode_images(model, images, device="cpu", precision="bf16")


def test_fp32_is_the_default_and_changes_nothing_on_the_cpu(model_and_images):
    model, images = model_and_images
    default = encode_images(model, images, device="cpu")
    explicit = encode_images(model, images, device="cpu", precision="fp32")
    for a, b in zip(default, explicit):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none is visible")
def test_cuda_fp32_repeats_itself_and_restores_the_tf32_flags(model_and_images):
    model, images = model_and_images
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    first = encode_images(model, images, device="cuda")
    second = encode_images(model, images, device="cuda", batch_size=2)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
    encode_images(model, images, device="cuda", precision="bf16")
