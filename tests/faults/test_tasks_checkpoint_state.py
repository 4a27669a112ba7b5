"""Tampered or truncated PS-KD and task checkpoint state: named errors that name the key and the checkpoint's origin."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_regs.callbacks import ProgressiveSelfKD
from lightning_regs.datamodules import IndexedDataset
from lightning_regs.functional import PredictionTable
from lightning_regs.models import MLP
from lightning_regs.tasks import ImageClassifier
from tests.helpers.trainers import QUIET

NOT_THIS_VERSION = r"not from this version of ProgressiveSelfKD"


def _state() -> dict:
    table = PredictionTable(4, 3)
    table.write(torch.arange(4), torch.full((4, 3), 1 / 3))
    return {"alpha_T": 0.8, "total_epochs": 3, "table": table.state_dict(), "fingerprint": None}


@pytest.mark.fault(area="checkpoints", outcome="refused")
@pytest.mark.parametrize("key", ["alpha_T", "total_epochs", "table", "fingerprint"])
def test_a_missing_pskd_key_is_named(key: str) -> None:
    state = _state()
    del state[key]
    with pytest.raises(ValueError, match=rf"lacks \['{key}'\].*{NOT_THIS_VERSION}"):
        ProgressiveSelfKD().load_state_dict(state)


@pytest.mark.fault(area="checkpoints", outcome="refused")
@pytest.mark.parametrize(("key", "value", "expected"), [
    ("alpha_T", "0.8", "a number"), ("alpha_T", True, "a number"), ("total_epochs", 2.5, "an int or None"),
    ("total_epochs", "3", "an int or None"), ("table", [1, 2], "a dict or None"),
    ("fingerprint", "abc", "a dict or None"),
])  # fmt: skip
def test_a_pskd_key_of_the_wrong_type_is_named(key: str, value, expected: str) -> None:
    state = _state()
    state[key] = value
    with pytest.raises(ValueError, match=rf"has {key}=.*expected {expected}.*{NOT_THIS_VERSION}"):
        ProgressiveSelfKD().load_state_dict(state)


@pytest.mark.fault(area="checkpoints", outcome="refused")
@pytest.mark.parametrize("state", [{}, [], None, "ProgressiveSelfKD"], ids=["empty", "list", "none", "str"])
def test_an_empty_or_foreign_pskd_state_is_named(state) -> None:
    with pytest.raises(ValueError, match=rf"ProgressiveSelfKD's checkpoint state .*{NOT_THIS_VERSION}"):
        ProgressiveSelfKD().load_state_dict(state)


@pytest.mark.fault(area="checkpoints", outcome="refused")
def test_a_non_positive_total_epochs_is_named() -> None:
    state = {**_state(), "total_epochs": 0}
    with pytest.raises(ValueError, match=rf"total_epochs=0.*{NOT_THIS_VERSION}"):
        ProgressiveSelfKD().load_state_dict(state)


@pytest.mark.fault(area="checkpoints", outcome="refused")
@pytest.mark.parametrize("drop", ["state_dict", "everything"])
def test_a_checkpoint_without_weights_is_a_named_error_for_the_task(tmp_path, drop: str) -> None:
    x = torch.randn(8, 1, 8, 8)
    task = ImageClassifier(MLP(in_features=64, num_classes=10, width=8, depth=2), 10)
    trainer = Trainer(max_epochs=1, default_root_dir=tmp_path, **{**QUIET, "enable_checkpointing": True})
    trainer.fit(task, DataLoader(IndexedDataset(TensorDataset(x, torch.arange(8) % 10)), batch_size=4))
    path = trainer.checkpoint_callback.best_model_path
    checkpoint = torch.load(path, weights_only=True)
    truncated = {} if drop == "everything" else {k: v for k, v in checkpoint.items() if k != "state_dict"}
    torch.save(truncated, tmp_path / "truncated.ckpt")
    fresh = ImageClassifier(MLP(in_features=64, num_classes=10, width=8, depth=2), 10)
    with pytest.raises(ValueError, match=r"checkpoint has no 'state_dict' .*truncated, or not a Lightning checkpoint"):
        fresh.on_load_checkpoint(torch.load(tmp_path / "truncated.ckpt", weights_only=True))
