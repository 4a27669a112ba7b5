"""Resumed from a mid-epoch checkpoint, does a run end where the uninterrupted one ends? Two data paths, one run.

A lightning_regs DataModule (here ``DatasetDataModule`` over the digits tensors, and ``DigitsDataModule``) keeps the
training position in its checkpoint state; the same data in a plain ``DataLoader`` given to ``fit`` keeps none, and
Lightning replays the interrupted epoch from its first batch. Prints, per path, the optimizer steps whose batches
differ from the uninterrupted run's and the largest final weight difference.

    python benchmarks/mid_epoch_resume.py --crash-at 25
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from lightning_regs.datamodules import DatasetDataModule, DigitsDataModule, EpochShuffleSampler, IndexedDataset
from lightning_regs.models import MLP
from lightning_regs.tasks import ImageClassifier


class Record(Callback):
    def __init__(self) -> None:
        self.seen: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen[trainer.global_step] = batch["index"].tolist()


class CrashAtStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("CRASH")


def digits() -> TensorDataset:
    data = load_digits()
    return TensorDataset(torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16, torch.tensor(data.target))


def make_data(path: str, batch_size: int):
    if path == "DigitsDataModule":
        return DigitsDataModule(batch_size=batch_size)
    if path == "DatasetDataModule":
        return DatasetDataModule(digits(), batch_size=batch_size)
    dataset = IndexedDataset(digits())  # the same order (seed, epoch), but the loader keeps no position
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochShuffleSampler(len(dataset), seed=0))


def run(path: str, root: Path, batch_size: int, crash_at: int | None = None, ckpt: Path | None = None):
    seed_everything(0)
    record = Record()
    callbacks = [record, ModelCheckpoint(dirpath=root, every_n_train_steps=7, save_last=True, save_top_k=-1)]
    if crash_at is not None:
        callbacks.append(CrashAtStep(crash_at))
    trainer = Trainer(max_epochs=3, callbacks=callbacks, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)  # fmt: skip
    task = ImageClassifier(MLP(in_features=64, num_classes=10, width=32, depth=2), 10, lr=0.05)
    try:
        trainer.fit(task, make_data(path, batch_size), ckpt_path=ckpt)
    except RuntimeError as error:
        if "CRASH" not in str(error):
            raise
    return record.seen, task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crash-at", type=int, default=25, help="crash before this optimizer step (mid-epoch)")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    print(f"checkpoint every 7 steps, crash before step {args.crash_at + 1}, resume from last.ckpt, 3 epochs")
    print(f"{'data path':<22}{'steps replayed wrongly':>24}{'max |w_resumed - w_full|':>28}")
    for path in ("DigitsDataModule", "DatasetDataModule", "plain DataLoader"):
        root = Path(tempfile.mkdtemp())
        try:
            full, full_task = run(path, root / "full", args.batch_size)
            run(path, root / "part", args.batch_size, crash_at=args.crash_at)
            resumed, resumed_task = run(path, root / "rest", args.batch_size, ckpt=root / "part" / "last.ckpt")
        finally:
            shutil.rmtree(root, ignore_errors=True)
        wrong = sum(resumed[step] != full[step] for step in resumed)
        diff = max(
            (a - b).abs().max().item() for a, b in zip(full_task.parameters(), resumed_task.parameters(), strict=True)
        )
        print(f"{path:<22}{wrong:>24}{diff:>28.3g}")


if __name__ == "__main__":
    main()
