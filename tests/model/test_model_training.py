"""Training (Algorithm 1) end to end, checkpoints, resume and encoding."""

import json

import numpy as np
import pytest
import torch

from fdn.archive_index.encode import encode_images
from fdn.errors import ModelError
from fdn.training.checkpoint import load_model, model_checksum, save_checkpoint
from fdn.training.trainer import Trainer, train, train_on_slices


def test_short_training_on_synthetic_archive_lowers_rec_and_seg(
    small_archive, tmp_path, tiny_config
):
    cfg = tiny_config(batch_size=8, epochs=7)
    result = train(small_archive, tmp_path / "m", cfg, "tiny", seed=0, device="cpu")
    assert result.stopped == "epochs" and result.epochs_done == 7
    records = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in records] == list(range(1, 8))
    first, last = records[0], records[-1]
    assert last["rec"] < 0.9 * first["rec"], (first["rec"], last["rec"])
    assert last["seg"] < 0.9 * first["seg"], (first["seg"], last["seg"])
    for name in (
        "config.json",
        "checkpoint.pt",
        "weights.pt",
        "samples/latest.png",
        "samples/epoch_0007.png",
    ):
        assert (tmp_path / "m" / name).is_file(), name


def test_checkpoint_reloads_to_bit_identical_outputs(tmp_path, tiny_config, make_slices):
    trainer = Trainer(
        tiny_config(), make_slices(16, 32), "tiny", seed=3, device=torch.device("cpu")
    )
    for _ in range(3):
        trainer.train_step()
    save_checkpoint(tmp_path, trainer.state())
    model, config = load_model(tmp_path)
    assert config == trainer.config and not model.training
    x = torch.randn(5, 4, 32, 32)
    trainer.model.eval()
    expected, got = trainer.model(x), model(x)
    for name, a, b in zip(expected._fields, expected, got, strict=True):
        assert torch.equal(a, b), name
    assert len(model_checksum(tmp_path)) == 64


def test_resume_continues_bit_for_bit(tmp_path, tiny_config, make_slices):
    slices = make_slices(16, 32)
    cfg = tiny_config(epochs=2)  # 4 steps per epoch
    train_on_slices(slices, tmp_path / "a", cfg, "tiny", seed=1, max_steps=6, samples=False)
    train_on_slices(slices, tmp_path / "b", cfg, "tiny", seed=1, max_steps=3, samples=False)
    r = train_on_slices(
        slices, tmp_path / "b", cfg, "tiny", resume=True, max_steps=6, samples=False
    )
    assert r.steps == 6
    a = torch.load(tmp_path / "a" / "weights.pt")
    b = torch.load(tmp_path / "b" / "weights.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert model_checksum(tmp_path / "a") == model_checksum(tmp_path / "b")


def test_refuses_to_overwrite_a_model_dir(tmp_path, tiny_config, make_slices):
    slices = make_slices(8, 32)
    train_on_slices(slices, tmp_path, tiny_config(), "tiny", max_steps=1, samples=False)
    with pytest.raises(ModelError, match="--resume"):
        train_on_slices(slices, tmp_path, tiny_config(), "tiny", max_steps=1)


def test_no_dm_trains_without_critic(tmp_path, tiny_config, make_slices):
    trainer = Trainer(
        tiny_config(distribution_matching=False), make_slices(8, 32), "tiny", 0, torch.device("cpu")
    )
    critic_before = {k: v.clone() for k, v in trainer.critic.state_dict().items()}
    m = trainer.train_step()
    assert "d_w" not in m
    for k, v in trainer.critic.state_dict().items():
        assert torch.equal(v, critic_before[k])


def test_encode_images_uint16_in_range(tiny_config):
    from fdn.model import FDN

    cfg = tiny_config()
    model = FDN(cfg).eval()
    images = np.random.default_rng(0).normal(size=(7, 4, 32, 32)).astype(np.float32)
    c_n, c_a = encode_images(model, images, batch_size=3)
    assert c_n.dtype == c_a.dtype == np.uint16 and c_n.shape == (7, 4, 4)
    assert c_n.max() < cfg.codebook_size and c_a.max() < cfg.codebook_size
    ref_n, ref_a = model.encode(torch.from_numpy(images))
    assert np.array_equal(c_n, ref_n.numpy()) and np.array_equal(c_a, ref_a.numpy())
    with pytest.raises(ValueError, match="images must be"):
        encode_images(model, images[:, :3])
    with pytest.raises(TypeError):
        encode_images(model, torch.from_numpy(images))


def test_load_model_errors(tmp_path):
    with pytest.raises(ModelError, match="not a directory"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelError, match="config.json: missing"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "weights.pt").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(tmp_path)
