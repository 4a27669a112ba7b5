"""A mid-epoch checkpoint resumed with another batch size or process count is a named error (issue 22, kind 2)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from lightning_regs.datamodules import DatasetDataModule, DigitsDataModule, DigitsSubsetDataModule
from lightning_regs.datamodules.base import ResumePositionError

MODULES = {
    "digits": lambda batch_size: DigitsDataModule(batch_size=batch_size),
    "digits_subset": lambda batch_size: DigitsSubsetDataModule(steps_per_epoch=20, batch_size=batch_size),
    "own_data": lambda batch_size: DatasetDataModule(
        TensorDataset(torch.randn(96, 2, generator=torch.Generator().manual_seed(0)), torch.arange(96) % 3),
        batch_size=batch_size,
    ),
}


def _state(name: str, **position) -> dict:
    module = MODULES[name](16)
    module.setup("fit")
    state = module.state_dict()
    state["training_position"] = {
        "epoch": 1, "batches": 3, "batch_size": 16, "samples": 48, "world_size": 1, "epoch_batches": 6, **position
    }  # fmt: skip
    return state


@pytest.mark.fault(area="checkpoints", outcome="refused")
@pytest.mark.parametrize("batch_size", [8, 12, 32])
@pytest.mark.parametrize("name", list(MODULES))
def test_another_batch_size_inside_an_epoch_is_refused(name, batch_size) -> None:
    with pytest.raises(
        ResumePositionError, match=rf"after 3 of its 6 batches of 16 .*batch_size={batch_size}.*batch_size=16"
    ):
        MODULES[name](batch_size).load_state_dict(_state(name))


@pytest.mark.fault(area="checkpoints", outcome="refused")
@pytest.mark.parametrize("name", list(MODULES))
def test_another_process_count_inside_an_epoch_is_refused(name) -> None:
    with pytest.raises(ResumePositionError, match=r"on 2 process\(es\), and this run has 1.*Resume on as many"):
        MODULES[name](16).load_state_dict(_state(name, world_size=2))


@pytest.mark.fault(area="checkpoints", outcome="handled")
@pytest.mark.parametrize(
    ("case", "batch_size", "position"),
    [("same batch size", 16, {}), ("at the epoch's end", 8, {"batches": 6}),
     ("at the epoch's start", 8, {"batches": 0}), ("an old checkpoint", 16, {"batch_size": None})],
)  # fmt: skip
@pytest.mark.parametrize("name", list(MODULES))
def test_a_position_this_module_can_continue_is_accepted(name, case, batch_size, position) -> None:
    state = _state(name, **position)
    if position.get("batch_size", 0) is None:
        state["training_position"] = {"epoch": 1, "batches": 3}
    module = MODULES[name](batch_size)
    module.load_state_dict(state)
    sampler = module.train_dataloader().sampler
    sampler.set_epoch(1)
    skipped = len(sampler.epoch_order()) - len(list(sampler))
    assert skipped == {"same batch size": 48, "an old checkpoint": 48}.get(case, skipped)
