"""MAN configured in one place (kind 4): ``man=True`` alone moves the EMA, ``man_momentum`` sets it."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_regs.models import MLP
from lightning_regs.tasks import LocalLearningClassifier
from tests.faults._tasks_helpers import batches, loader
from tests.helpers.trainers import QUIET

REFUSED = pytest.mark.fault(area="tasks", outcome="refused")
HANDLED = pytest.mark.fault(area="tasks", outcome="handled")


def _task(**kwargs) -> LocalLearningClassifier:
    seed_everything(0)
    net = MLP(in_features=64, num_classes=10, width=16, depth=3)
    return LocalLearningClassifier(net, 10, split=[0], man=True, input_shape=(1, 8, 8), head_norm=False, **kwargs)


def _fit(task: LocalLearningClassifier, callbacks=(), steps: int = 2) -> None:
    trainer = Trainer(max_steps=steps, callbacks=list(callbacks), limit_val_batches=0, **QUIET)
    trainer.fit(task, train_dataloaders=loader(batches("image", n=steps)))


@REFUSED
@pytest.mark.parametrize("bad", [-0.5, 1.01, float("nan"), float("inf"), "0.9", None])
def test_a_man_momentum_that_is_not_a_number_in_zero_one_is_named(bad) -> None:
    with pytest.raises(ValueError, match=rf"MAN momentum must be a number in \[0, 1\].*got {bad!r}"):
        _task(man_momentum=bad)


@REFUSED
def test_a_man_momentum_without_man_is_refused() -> None:
    net = MLP(in_features=64, num_classes=10, width=16, depth=3)
    with pytest.raises(ValueError, match=r"man_momentum=0\.9 sets .* man=False builds none: set man=True"):
        LocalLearningClassifier(net, 10, split=[0], man_momentum=0.9, input_shape=(1, 8, 8))


@HANDLED
@pytest.mark.parametrize("preset", ["library", "official"])
def test_man_true_alone_moves_the_ema(preset) -> None:
    task = _task(man_momentum=0.5, preset=preset)
    head = task.aux_heads["0"]
    start = [p.detach().clone() for p in head.ema.parameters()]
    _fit(task)
    assert all(not torch.equal(a, b) for a, b in zip(start, head.ema.parameters(), strict=True))
