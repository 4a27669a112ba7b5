"""A short fit with a monitor, shared by the local-complexity and robustness monitor tests."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.models import MLP
from lightning_regs.tasks import ImageClassifier
from tests.helpers.loggers import RecordingLogger
from tests.helpers.trainers import QUIET

__all__ = ["fit_with_monitor"]


def small_task(lr: float = 1e-2) -> ImageClassifier:
    model = MLP(in_features=64, num_classes=10, width=16, depth=3)
    return ImageClassifier(model, 10, optimizer="adamw", lr=lr, weight_decay=0.0, scheduler="constant")


def fit_with_monitor(
    tmp_path: Path,
    monitor: Callback,
    max_steps: int = 12,
    callbacks: tuple = (),
    ckpt_path: Path | None = None,
    logger=None,
    lr: float = 1e-2,
    **trainer_kwargs,
) -> tuple[ImageClassifier, Trainer]:
    """Digits in three batches per epoch, a small MLP, checkpoints in ``tmp_path``."""
    seed_everything(0)
    task = small_task(lr)
    trainer = Trainer(
        max_steps=max_steps,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        **{**QUIET, "enable_checkpointing": True, "logger": logger if logger is not None else RecordingLogger()},
        callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True), monitor, *callbacks],
        **trainer_kwargs,
    )
    trainer.fit(task, DigitsDataModule(batch_size=420), ckpt_path=ckpt_path)
    return task, trainer
