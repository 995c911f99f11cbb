"""Gradient routing of Algorithm 1."""

import torch

from fdn.losses import critic_loss, regularization_loss
from fdn.model import FDN, Critic


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()}


def _touched(grads: dict[str, torch.Tensor | None], prefix: str) -> bool:
    return any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(prefix))


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


def test_decode_helpers_match_forward(tiny_config):
    model = FDN(tiny_config()).eval()
    x = torch.randn(2, 4, 32, 32)
    out = model(x)
    codes_n, _ = model.encode(x)
    torch.testing.assert_close(model.decode_normal(codes_n), out.x_hat_minus)
    image, seg = model.decode(codes_n, model.encode(x)[1])
    # forward decodes x̂^+ and x̂^- in one doubled batch: equal up to float summation order
    torch.testing.assert_close(image, out.x_hat_plus, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(seg, out.seg_soft)
