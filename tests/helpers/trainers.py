"""Trainer settings and small DataModules the tests share (module level, so ddp_spawn can pickle them)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback

from lightning_regs.datamodules import DigitsDataModule

__all__ = ["QUIET", "CrashAtEpoch", "CrashAtStep", "SequentialDigits"]

# Trainer arguments that keep test output short and runs deterministic.
QUIET: dict[str, Any] = {
    "logger": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "deterministic": True,
    "enable_checkpointing": False,
}


class SequentialDigits(DigitsDataModule):
    """Digits whose training order is shared by one process and W ranks: rank r takes items r, r+W, ... of it.

    The DataModules' ``EpochShuffleSampler`` draws one order per (seed, epoch) and, under DDP, gives
    rank r the items r, r+W, ... of it. With per-rank batch B on W ranks, the union of one step's
    batches is the single-process batch of W·B, so a DDP run can be compared with a single-process
    one; the sampler also keeps the position of a mid-epoch checkpoint.
    """


class CrashAtEpoch(Callback):
    """Raises ``RuntimeError("CRASH")`` at the start of ``epoch``, as a killed job would stop."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("CRASH")


class CrashAtStep(Callback):
    """Raises ``RuntimeError("CRASH")`` before the batch that would make optimizer step ``step + 1``: mid-epoch."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("CRASH")
