"""DatasetDataModule: a researcher's own data sets with the library's batch contract, exact resume and checks."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import Dataset, TensorDataset

from lightning_regs.callbacks import ProgressiveSelfKD
from lightning_regs.datamodules import DatasetDataModule
from lightning_regs.models import MLP
from lightning_regs.tasks import ImageClassifier
from tests.helpers.trainers import QUIET, CrashAtStep


def own_data(n: int = 96, permute: bool = False) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 8, 8, generator=generator), torch.arange(n) % 10
    return TensorDataset(x, y[torch.randperm(n, generator=generator)] if permute else y)


class Record(Callback):
    def __init__(self) -> None:
        self.seen: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen[trainer.global_step] = batch["index"].tolist()


def _fit(root, crash_at_step=None, ckpt_path=None, data=None):
    seed_everything(0)
    record, pskd = Record(), ProgressiveSelfKD(alpha_T=0.8)
    callbacks = [record, pskd, ModelCheckpoint(dirpath=root, every_n_train_steps=2, save_last=True, save_top_k=-1)]
    if crash_at_step is not None:
        callbacks.append(CrashAtStep(crash_at_step))
    task = ImageClassifier(MLP(in_features=64, num_classes=10, width=16, depth=2), 10, lr=0.05)
    trainer = Trainer(
        max_epochs=3, default_root_dir=root, callbacks=callbacks, **{**QUIET, "enable_checkpointing": True}
    )
    datamodule = DatasetDataModule(data or own_data(), val=own_data(16), batch_size=16)
    try:
        trainer.fit(task, datamodule, ckpt_path=ckpt_path)
    except RuntimeError as error:
        if "CRASH" not in str(error):
            raise
    return task, pskd, record


def test_a_run_stopped_mid_epoch_resumes_with_the_next_batch(tmp_path) -> None:
    full, full_pskd, full_record = _fit(tmp_path / "full")
    _fit(tmp_path / "part", crash_at_step=9)  # 6 batches an epoch: the last checkpoint is step 8, epoch 1
    resumed, resumed_pskd, record = _fit(tmp_path / "part", ckpt_path=tmp_path / "part" / "last.ckpt")
    assert min(record.seen) == 8 and all(record.seen[step] == full_record.seen[step] for step in record.seen)
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(full_pskd.table.values, resumed_pskd.table.values, rtol=0, atol=0)


def test_resuming_on_other_data_is_a_named_error(tmp_path) -> None:
    _fit(tmp_path, crash_at_step=9)
    with pytest.raises(
        ValueError, match=r"not the data the checkpoint was made on \(the train split changed: the labels differ"
    ):
        _fit(tmp_path, ckpt_path=tmp_path / "last.ckpt", data=own_data(permute=True))


class WithClasses(Dataset):
    classes = ("cat", "dog", "bird")

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int):
        return torch.zeros(2), index % 3


def test_num_classes_comes_from_the_data_sets_classes_and_is_checked() -> None:
    assert DatasetDataModule(WithClasses()).num_classes == 3
    data = DatasetDataModule(WithClasses(), num_classes=4)
    with pytest.raises(ValueError, match="holds 3 classes but num_classes=4"):
        data.setup("fit")


def test_without_val_or_test_the_loops_are_skipped() -> None:
    seed_everything(0)
    task = ImageClassifier(MLP(in_features=64, num_classes=10, width=16, depth=2), 10)
    trainer = Trainer(max_epochs=1, **QUIET)
    trainer.fit(task, DatasetDataModule(own_data(), batch_size=32))
    assert trainer.global_step == 3
