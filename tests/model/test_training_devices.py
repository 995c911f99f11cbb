"""Random draws of a training step land on the device of the tensors they feed.

The trainer keeps one CPU generator (so a resumed run repeats its draws on any device); torch
refuses a CPU generator for a draw on another device, which is how `fdn-index train` once
crashed at its first CUDA step. The "meta" device is a device other than the CPU that every
machine has, so the CPU suite sees that class of bug too.
"""

import pytest
import torch
from torch.overrides import TorchFunctionMode

from fdn.model.critic import Critic
from fdn.training.losses import critic_loss
from fdn.training.trainer import Trainer


def test_critic_loss_draws_eps_on_the_generators_device_for_tensors_elsewhere():
    critic = Critic(8, 4).to("meta")
    z_h = torch.empty(3, 8, 4, 4, device="meta")
    z_d = torch.empty(3, 8, 4, 4, device="meta")
    generator = torch.Generator().manual_seed(0)
    loss, d_w, penalty = critic_loss(critic, z_h, z_d, 10.0, generator)
    assert loss.device.type == "meta" and penalty.device.type == "meta"
    # the CPU generator advanced by exactly one ε per pair
    replay = torch.Generator().manual_seed(0)
    torch.rand(3, 1, 1, 1, generator=replay)
    assert torch.equal(generator.get_state(), replay.get_state())


class _GeneratorDraws(TorchFunctionMode):
    """Records (function, generator device, result device) of every call given a generator."""

    def __init__(self):
        super().__init__()
        self.draws = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        generator = kwargs.get("generator")
        if isinstance(generator, torch.Generator) and isinstance(result, torch.Tensor):
            self.draws.append((func.__name__, generator.device, result.device))
        return result


def test_every_seeded_draw_of_a_training_step_is_made_on_its_generators_device(
    tiny_config, make_slices
):
    cfg = tiny_config(batch_size=4, distribution_matching=True)
    trainer = Trainer(
        cfg, make_slices(8, cfg.image_size), "tiny", seed=0, device=torch.device("cpu")
    )
    with _GeneratorDraws() as mode:
        trainer.train_step()
    names = [name for name, _, _ in mode.draws]
    # augmentation (angle, flip) and one ε per critic step: the test sees the draws it guards
    assert names.count("rand") == 2 + cfg.critic_steps, names
    for name, generator_device, result_device in mode.draws:
        assert generator_device == result_device, (name, generator_device, result_device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none is visible")
def test_training_steps_and_resumes_on_cuda(tmp_path, tiny_config, make_slices):
    from fdn.training.trainer import train_on_slices

    cfg = tiny_config(batch_size=4, epochs=2)
    slices = make_slices(16, cfg.image_size)
    first = train_on_slices(slices, tmp_path / "m", cfg, "tiny", max_steps=3, device="cuda")
    assert first.steps == 3 and first.stopped == "max steps"
    resumed = train_on_slices(
        slices, tmp_path / "m", cfg, "tiny", resume=True, max_steps=6, device="cuda"
    )
    assert resumed.steps == 6
