"""Floating-point precision policy shared by the model and its losses."""

import torch


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or float64 when it already is.

    Softmax, code assignment and the losses never run in bf16/fp16 (autocast), and a float64
    model or loss stays float64 end to end, which is how the tests compare two computation
    paths without float32 summation-order noise.
    """
    return x if x.dtype == torch.float64 else x.float()
