"""StableAdamW: exactly AdamW when the update is never clipped, and the update-clipping equations (re-derived in
float64 numpy) when it is; INP-Former's ``update_clip`` selects it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from lightning_regs.datamodules.mvtec_toy import MVTecToyDataModule
from lightning_regs.tasks.inp_former import INPFormer
from lightning_regs.tasks.stable_adamw import StableAdamW
from tests.helpers.trainers import QUIET


def _gradients(steps: int, shape: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) * (1 + 3 * i) for i in range(steps)]


def _run(optimizer_class, grads, **kwargs) -> torch.Tensor:
    weight = torch.nn.Parameter(torch.linspace(-1, 1, grads[0].numel()).reshape(grads[0].shape))
    optimizer = optimizer_class([weight], **kwargs)
    for grad in grads:
        weight.grad = grad.clone()
        optimizer.step()
    return weight.detach()


@pytest.mark.parametrize("amsgrad", [False, True])
def test_without_clipping_it_is_exactly_adamw(amsgrad):
    grads = _gradients(6, (3, 5))
    settings = {"lr": 0.01, "betas": (0.9, 0.99), "eps": 1e-10, "weight_decay": 0.1, "amsgrad": amsgrad}
    expected = _run(torch.optim.AdamW, grads, **settings)
    assert torch.equal(_run(StableAdamW, grads, **settings, clip_threshold=1e30), expected)


def _numpy_stable_adamw(w, grads, lr, b1, b2, eps, wd, amsgrad, clip):
    m, v, v_max = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        w = w * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        v_max = np.maximum(v_max, v)
        v_hat = (v_max if amsgrad else v) / (1 - b2**t)
        denominator = np.sqrt(v_hat) + eps
        rms = np.sqrt(np.mean((g / denominator) ** 2))
        w = w - lr / (1 - b1**t) / max(1.0, rms / clip) * m / denominator
    return w


@pytest.mark.parametrize("amsgrad", [False, True])
def test_clipped_steps_follow_the_equations(amsgrad):
    grads = _gradients(5, (4, 4), seed=1)
    grads[3] = grads[3] * 50  # a gradient spike: the update's RMS far above the threshold
    settings = {"lr": 0.05, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "amsgrad": amsgrad}
    got = _run(StableAdamW, grads, **settings, clip_threshold=0.7)
    w0 = np.linspace(-1, 1, 16).reshape(4, 4)
    expected = _numpy_stable_adamw(w0, [g.double().numpy() for g in grads], 0.05, 0.9, 0.999, 1e-8, 0.01, amsgrad, 0.7)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-6)
    unclipped = _run(StableAdamW, grads, **settings, clip_threshold=1e30)
    assert not torch.allclose(got, unclipped, atol=1e-4)  # the clipping changed the trajectory


def test_first_step_closed_form():
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    optimizer = StableAdamW([weight], lr=0.1, weight_decay=0.0, eps=0.0, clip_threshold=0.25)
    weight.grad = torch.tensor([3.0, -4.0, 0.1])
    optimizer.step()  # u = g / |g| = sign(g), RMS 1: the step lr * sign(g) divided by 1 / 0.25
    torch.testing.assert_close(weight.detach(), torch.tensor([1.0, -2.0, 0.5]) - 0.025 * torch.tensor([1.0, -1.0, 1.0]))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"clip_threshold": 0.0}, "clip_threshold"), ({"betas": (0.9, 1.0)}, "betas"), ({"lr": -1.0}, "lr")],
)
def test_bad_arguments_are_named_errors(kwargs, words):
    with pytest.raises(ValueError, match=words):
        StableAdamW([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_inp_former_update_clip_trains_with_stable_adamw(tmp_path):
    task = INPFormer("efficientnet_lite0", None, [1, 2], num_decoder_blocks=2, update_clip=1.0)
    data = MVTecToyDataModule(
        tmp_path / "data", "stripes", num_train=4, num_test_good=2, num_test_defect=1, batch_size=2
    )
    trainer = Trainer(default_root_dir=tmp_path, accelerator="cpu", max_steps=2, **QUIET)
    trainer.fit(task, data)
    assert isinstance(trainer.optimizers[0], StableAdamW) and trainer.global_step == 2
    assert isinstance(INPFormer("efficientnet_lite0", None, [1, 2]).update_clip, type(None))
    with pytest.raises(ValueError, match="update_clip"):
        INPFormer("efficientnet_lite0", None, [1, 2], update_clip=0.0)
