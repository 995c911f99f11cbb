import numpy as np
import torch

from fdn.model.quantizer import VectorQuantizer


def _quantizer(codebook: np.ndarray, decay: float, eps: float) -> VectorQuantizer:
    k, d = codebook.shape
    q = VectorQuantizer(k, d, decay=decay, eps=eps)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor(codebook))
        q.embed_avg.copy_(torch.tensor(codebook))
        q.cluster_size.fill_(1.0)
        q.initted.fill_(True)
    return q


def test_lookup_matches_brute_force():
    rng = np.random.default_rng(0)
    cb = rng.normal(size=(16, 3)).astype(np.float32)
    z = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    q = _quantizer(cb, 0.9, 1e-5).eval()
    codes = q.lookup(torch.tensor(z)).numpy()
    flat = z.transpose(0, 2, 3, 1).reshape(-1, 3)
    expected = np.array([np.argmin(((cb - v) ** 2).sum(1)) for v in flat]).reshape(2, 4, 5)
    assert np.array_equal(codes, expected)


def test_one_ema_update_by_hand():
    # K = 3 codes in D = 2; decay γ = 0.5, ε = 0.1; four encoder outputs.
    cb = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]], np.float32)
    q = _quantizer(cb, decay=0.5, eps=0.1).train()
    z = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 1.0], [5.0, 0.0]], np.float32)
    # nearest codes: 0, 0, 1, 1 (code 2 unused)
    z_e = torch.tensor(z).T.reshape(1, 2, 2, 2)  # (B=1, D=2, h=2, w=2), row-major positions
    out = q(z_e)
    assert out.codes.flatten().tolist() == [0, 0, 1, 1]
    # by hand: N = 0.5·[1, 1, 1] + 0.5·[2, 2, 0] = [1.5, 1.5, 0.5]
    # m = 0.5·cb + 0.5·[[1, 1], [8, 1], [0, 0]] = [[0.5, 0.5], [6, 0.5], [0, 2]]
    # n = 3.5; Ñ = (N + 0.1) / (3.5 + 0.3) · 3.5 = [1.6, 1.6, 0.6] · 3.5 / 3.8
    n_tilde = np.array([1.6, 1.6, 0.6]) * 3.5 / 3.8
    m = np.array([[0.5, 0.5], [6.0, 0.5], [0.0, 2.0]])
    # N and m: products by γ = 0.5 and sums of small dyadic numbers are exact in float32, so
    # the float32 update must give exactly the hand-computed values.
    np.testing.assert_array_equal(q.cluster_size.numpy(), [1.5, 1.5, 0.5])
    np.testing.assert_array_equal(q.embed_avg.numpy(), m)
    # e = m / Ñ: ε = 0.1 and K·ε are rounded to float32 (u each), then N + ε, ΣN + Kε, the
    # division, the product by ΣN and the final division round once each: at most 7 relative
    # roundings of u on the float64 reference (8·u leaves room for second-order terms).
    u = np.finfo(np.float32).eps / 2
    np.testing.assert_allclose(q.codebook.numpy(), m / n_tilde[:, None], rtol=8 * u, atol=0)
    # the output uses the codebook before the update (VQ-VAE): a lookup copies, bit for bit
    np.testing.assert_array_equal(out.z_q_raw[0].reshape(2, 4).T.numpy(), cb[[0, 0, 1, 1]])


def test_eval_mode_does_not_update_and_unused_codes_decay():
    cb = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]], np.float32)
    q = _quantizer(cb, decay=0.5, eps=1e-5).eval()
    q(torch.ones(1, 2, 2, 2))
    np.testing.assert_array_equal(q.codebook.numpy(), cb)
    q.train()
    z_e = torch.tensor([[1.0, 0.0], [3.0, 0.0]]).T.reshape(1, 2, 1, 2)
    for _ in range(60):
        q(z_e)
    assert torch.linalg.norm(q.codebook[2]) < 1e-3  # an unused code tends to the zero vector


def test_straight_through_gradient():
    q = _quantizer(np.eye(3, 2, dtype=np.float32), 0.9, 1e-5).eval()
    z_e = torch.randn(2, 2, 3, 3, requires_grad=True)
    w = torch.randn(2, 2, 3, 3)
    (q(z_e).z_q * w).sum().backward()
    torch.testing.assert_close(z_e.grad, w)
