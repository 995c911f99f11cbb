"""Gradient routing of Algorithm 1."""

import torch

from fdn.model import FDN, Critic
from fdn.training.losses import critic_loss, regularization_loss


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()}


def _touched(grads: dict[str, torch.Tensor | None], prefix: str) -> bool:
    return any(
        g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(prefix)
    )


def test_critic_step_leaves_model_grads_untouched(tiny_config):
    cfg = tiny_config()
    model, critic = FDN(cfg), Critic(cfg.code_dim, cfg.latent_size)
    out = model(torch.randn(4, 4, 32, 32))
    out.x_hat_minus.pow(2).mean().backward(retain_graph=True)  # some model grads exist
    before = _grads(model)
    z = out.z_q_normal
    loss, _, _ = critic_loss(critic, z[:2].detach(), z[2:].detach(), cfg.lambda_gp)
    loss.backward()
    after = _grads(model)
    for name in before:
        assert (before[name] is None) == (after[name] is None), name
        if before[name] is not None:
            assert torch.equal(before[name], after[name]), name
    assert _touched(_grads(critic), "")


def test_l_reg_reaches_encoder_and_normal_branch_only(tiny_config):
    cfg = tiny_config()
    model, critic = FDN(cfg), Critic(cfg.code_dim, cfg.latent_size)
    out = model(torch.randn(4, 4, 32, 32))
    codebook_abnormal = model.quantizer_abnormal.codebook.clone()
    critic.requires_grad_(False)
    regularization_loss(critic, out.z_q_normal[2:]).backward()
    g = _grads(model)
    assert _touched(g, "encoder.trunk.")
    assert _touched(g, "encoder.branch_normal.")
    assert not _touched(g, "encoder.branch_abnormal.")
    assert not _touched(g, "seg_decoder.")
    assert not _touched(g, "image_decoder.")
    # codebooks are EMA buffers: no gradient reaches them, L_reg leaves the abnormal one as is
    assert not model.quantizer_abnormal.codebook.requires_grad
    assert torch.equal(model.quantizer_abnormal.codebook, codebook_abnormal)
    assert all(p.grad is None for p in critic.parameters())


def test_segmentation_loss_does_not_reach_normal_branch(tiny_config):
    model = FDN(tiny_config())
    out = model(torch.randn(4, 4, 32, 32))
    out.seg_logits.pow(2).mean().backward()
    g = _grads(model)
    assert _touched(g, "encoder.branch_abnormal.") and _touched(g, "seg_decoder.")
    assert not _touched(g, "encoder.branch_normal.") and not _touched(g, "image_decoder.")


def test_x_hat_plus_sees_stop_gradient_of_seg_softmax(tiny_config):
    # x̂^+ = f(z_q^-, sg(ỹ)): the reconstruction loss must not train the segmentation path
    model = FDN(tiny_config())
    out = model(torch.randn(4, 4, 32, 32))
    (out.x_hat_plus.pow(2).mean() + out.x_hat_minus.pow(2).mean()).backward()
    g = _grads(model)
    assert not _touched(g, "seg_decoder.") and not _touched(g, "encoder.branch_abnormal.")
    assert _touched(g, "image_decoder.") and _touched(g, "encoder.branch_normal.")


def _reduction_error_bound(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Absolute bound on how far two summation orders of the same float64 network may differ.

    Each convolution or linear layer sums at most `fan_in` products; reordering such a sum
    changes it by at most fan_in · u · Σ|terms| (Higham, Accuracy and Stability, eq. 3.5), and
    the layers add their errors. Σ|terms| is taken as the largest magnitude any layer produces
    on x (plus 1 for the cancelling terms); u is float64's unit roundoff. A wrong decode path
    differs by O(1), ten orders of magnitude more.
    """
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    largest = [0.0]

    def record(_module, _inputs, output):
        largest[0] = max(largest[0], float(output.detach().abs().max()))

    hooks = [m.register_forward_hook(record) for m in layers]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    fan_in = max(m.weight[0].numel() for m in layers)
    u = torch.finfo(torch.float64).eps / 2
    return len(layers) * fan_in * u * (largest[0] + 1.0)


def test_decode_helpers_match_forward(tiny_config):
    # forward decodes x̂^+ and x̂^- in one doubled batch and feeds the decoders straight-through
    # values z_e + (z_q - z_e); the helpers decode each on its own from the code vectors. Both
    # compute the same function in a different summation order, so compare them in float64,
    # where that order costs ~1e-13, against a bound derived from the network's shape.
    model = FDN(tiny_config()).double().eval()
    x = torch.randn(2, 4, 32, 32, dtype=torch.float64)
    out = model(x)
    codes_n, codes_a = model.encode(x)
    assert torch.equal(codes_n, out.codes_normal) and torch.equal(codes_a, out.codes_abnormal)
    x_hat_minus = model.decode_normal(codes_n)
    image, seg = model.decode(codes_n, codes_a)
    tol = _reduction_error_bound(model, x)
    for got, expected in (
        (x_hat_minus, out.x_hat_minus),
        (image, out.x_hat_plus),
        (seg, out.seg_soft),
    ):
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, expected, rtol=0, atol=tol)
