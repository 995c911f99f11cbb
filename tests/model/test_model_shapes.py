import pytest
import torch

from fdn.model import FDN, PRESETS, FDNConfig


@pytest.mark.parametrize("latent,size", [(4, 32), (8, 32), (16, 32), (32, 64)])
def test_forward_shapes_every_latent_size(latent, size, tiny_config):
    cfg = tiny_config(latent_size=latent, image_size=size)
    model = FDN(cfg)
    x = torch.randn(4, 4, size, size)
    out = model(x)
    d, k = cfg.code_dim, cfg.codebook_size
    for z in (out.z_e_normal, out.z_e_abnormal, out.z_q_normal, out.z_q_abnormal):
        assert z.shape == (4, d, latent, latent)
    for c in (out.codes_normal, out.codes_abnormal):
        assert c.shape == (4, latent, latent) and c.dtype == torch.int64
        assert int(c.min()) >= 0 and int(c.max()) < k
    assert out.seg_logits.shape == out.seg_soft.shape == (4, 4, size, size)
    torch.testing.assert_close(out.seg_soft.sum(1), torch.ones(4, size, size))
    assert out.x_hat_plus.shape == out.x_hat_minus.shape == (4, 4, size, size)
    assert out.lat_loss.shape == ()
    model.eval()
    c_n, c_a = model.encode(x)
    assert c_n.shape == c_a.shape == (4, latent, latent)
    out_eval = model(x)
    assert torch.equal(out_eval.codes_normal, c_n) and torch.equal(out_eval.codes_abnormal, c_a)
    assert model.quantizer_normal.codebook.shape == (k, d)


def test_paper_presets_follow_tables_c1_c3():
    for name, latent in [("fdn-4x4", 4), ("fdn-8x8", 8), ("fdn-16x16", 16), ("fdn-32x32", 32)]:
        cfg = PRESETS[name]
        assert (cfg.image_size, cfg.latent_size, cfg.code_dim, cfg.codebook_size) == (
            256,
            latent,
            64,
            512,
        )
        assert (cfg.lambda_lat, cfg.lambda_seg, cfg.lambda_rec, cfg.lambda_gp) == (0.25, 5, 5, 10)
        assert cfg.critic_steps == 5 and cfg.focal_gamma == 2 and cfg.lr == 1e-4
        assert cfg.lambda_reg == cfg.lambda_critic == (1e-4 if latent <= 8 else 5e-4)
    model = FDN(PRESETS["fdn-8x8"])
    # Table C.1: 32-64-128 trunk, then [ResBlock + StridedConv] x3 per branch to 8x8
    h = model.encoder.trunk(torch.zeros(1, 4, 256, 256))
    assert h.shape == (1, 128, 64, 64)
    z = model.encoder.branch_normal(h)
    assert z.shape == (1, 64, 8, 8)
    # Table C.2: decoder widths 128 - 128 - 128 - 128 - 64 - 32
    widths = [model.seg_decoder.head.conv_1.out_channels] + [
        b.conv_1.out_channels for b in model.seg_decoder.blocks
    ]
    assert widths == [128, 128, 128, 128, 64, 32]
    assert [b.conv_1.out_channels for b in model.image_decoder.blocks] == [128, 128, 128, 64, 32]


def test_config_validation(tiny_config):
    with pytest.raises(ValueError, match="power of two"):
        FDNConfig(image_size=96, latent_size=8)
    with pytest.raises(ValueError):
        FDNConfig(batch_size=1)
    model = FDN(tiny_config())
    with pytest.raises(ValueError, match="expects x of shape"):
        model(torch.zeros(2, 3, 32, 32))
    with pytest.raises(TypeError):
        model.encode([[0.0]])


def test_cpu_presets_come_from_the_same_code():
    for name in ("cpu-64", "cpu-128", "tiny"):
        cfg = PRESETS[name]
        model = FDN(cfg)
        c_n, _ = model.encode(torch.zeros(1, 4, cfg.image_size, cfg.image_size))
        assert c_n.shape == (1, cfg.latent_size, cfg.latent_size)
    # a CPU preset is the paper's config with smaller sizes: only these fields differ
    paper, cpu = PRESETS["fdn-8x8"], PRESETS["cpu-64"]
    differ = {f for f in paper.__dataclass_fields__ if getattr(paper, f) != getattr(cpu, f)}
    assert differ <= {
        "image_size",
        "width",
        "code_dim",
        "codebook_size",
        "spade_hidden",
        "batch_size",
        "epochs",
        "latent_size",
        "lr",
    }, differ
    assert cpu.image_size == 64 and cpu.latent_size == paper.latent_size
