"""DigitsGCDDataModule on the DataModule base: its split, fingerprints and training position resume; its GCD rows."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_regs.datamodules import SplitDataModule
from lightning_regs.datamodules.base import DataChangedError
from lightning_regs.datamodules.digits_gcd import DigitsGCDDataModule
from tests.helpers.trainers import QUIET


class _Recorder(pl.LightningModule):
    """A linear map of the two views; records every training batch's ``index``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(128, 1)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["index"].tolist())
        return self.layer(batch["image"].flatten(1)).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(tmp_path: Path, data, max_epochs: int, ckpt_path: Path | None = None, callbacks=()) -> list[list[int]]:
    module = _Recorder()
    options = {**QUIET, "enable_checkpointing": bool(callbacks), "limit_val_batches": 0}
    trainer = pl.Trainer(max_epochs=max_epochs, default_root_dir=tmp_path, callbacks=list(callbacks), **options)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module.seen


def test_it_is_a_split_datamodule_whose_state_holds_the_split_and_each_splits_fingerprint():
    dm = DigitsGCDDataModule(batch_size=32, seed=2)
    assert isinstance(dm, SplitDataModule) and dm.num_classes == 10
    dm.setup("fit")
    state = dm.state_dict()
    assert {"seed", "labeled_fraction", "test_fraction", "known_classes"} <= state.keys()
    assert {"train_indices", "test_indices", "labeled_indices"} <= state.keys()
    assert state["data_fingerprint"].keys() == {"train", "val", "test"}
    train = dm.datasets["train"]
    assert len(state["labeled_indices"]) == int(train.labeled.sum())
    assert len(dm.datasets["val"]) == len(train) - int(train.labeled.sum())  # the unlabelled training images


def test_resuming_adopts_the_checkpoints_split_and_refuses_changed_data(tmp_path):
    original = DigitsGCDDataModule(seed=0)
    original.setup()
    torch.save(original.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    resumed = DigitsGCDDataModule(seed=1)
    with pytest.warns(UserWarning, match="checkpoint's split"):
        resumed.load_state_dict(state)
    assert resumed.seed == 0
    for split in ("train", "val", "test"):
        assert torch.equal(resumed.datasets[split].images, original.datasets[split].images)
        assert torch.equal(resumed.datasets[split].targets, original.datasets[split].targets)
    tampered = dict(state)
    tampered["data_fingerprint"] = {**state["data_fingerprint"], "val": state["data_fingerprint"]["train"]}
    with pytest.raises(DataChangedError, match="the val split changed"):
        DigitsGCDDataModule(seed=0).load_state_dict(tampered)


def test_a_checkpoint_with_other_known_digits_is_refused():
    original = DigitsGCDDataModule(known_classes=(0, 1, 2))
    original.setup()
    with pytest.raises(ValueError, match=r"known classes \[0, 1, 2\].*targets would change meaning"):
        DigitsGCDDataModule(known_classes=(0, 1, 3)).load_state_dict(original.state_dict())


def test_a_mid_epoch_checkpoint_resumes_at_the_next_batch(tmp_path):
    data = dict(batch_size=256, seed=0)  # 1,438 training images: 5 whole batches per epoch
    uninterrupted = _fit(tmp_path / "a", DigitsGCDDataModule(**data), max_epochs=2)
    every_3 = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    _fit(tmp_path / "b", DigitsGCDDataModule(**data), max_epochs=1, callbacks=[every_3])
    checkpoint = tmp_path / "ckpt" / "epoch=0-step=3.ckpt"
    position = torch.load(checkpoint, weights_only=True)["DigitsGCDDataModule"]["training_position"]
    assert position["epoch"] == 0 and position["batches"] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's note on resuming inside an epoch
        rest = _fit(tmp_path / "c", DigitsGCDDataModule(**data), max_epochs=2, ckpt_path=checkpoint)
    assert uninterrupted[:3] + rest == uninterrupted and len(uninterrupted) == 10


def test_the_training_batches_are_those_the_seeded_shuffling_loader_gave(tmp_path):
    """Before it was on the base, the training loader was DataLoader(shuffle=True, drop_last=True, seeded generator):
    the batches (and so the published figures of docs/methods/lego_gcd.md) are the same."""
    dm = DigitsGCDDataModule(batch_size=128, seed=3)
    dm.setup()
    generator = torch.Generator().manual_seed(3)
    before = DataLoader(dm.datasets["train"], batch_size=128, shuffle=True, drop_last=True, generator=generator)
    assert _fit(tmp_path / "a", dm, max_epochs=3) == _fit(tmp_path / "b", before, max_epochs=3)


def test_targets_put_the_known_digits_first():
    dm = DigitsGCDDataModule(known_classes=(7, 5, 9, 8, 6))
    dm.setup()
    assert dm.class_order.tolist() == [7, 5, 9, 8, 6, 0, 1, 2, 3, 4]
    train = dm.datasets["train"]
    assert set(train.targets[train.labeled].tolist()) == {0, 1, 2, 3, 4}  # the labelled rows: known digits
    assert bool((train.targets[~train.labeled] == -1).all())
    assert set(train.truth[~train.labeled].tolist()) == set(range(10))
    default = DigitsGCDDataModule()
    assert default.class_order.tolist() == list(range(10))  # known 0-4: a target is its digit
