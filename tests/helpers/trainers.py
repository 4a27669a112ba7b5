"""Trainer settings and small DataModules the tests share (module level, so ddp_spawn can pickle them)."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from lightning.pytorch import Callback
from torch.utils.data import DataLoader, DistributedSampler

from lightning_regs.datamodules import DigitsDataModule

__all__ = ["QUIET", "CrashAtEpoch", "SequentialDigits"]

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
    """Digits in a fixed order; under DDP rank r takes samples r, r+W, ... (no shuffling, no padding).

    With per-rank batch B on W ranks, the union of one step's batches is the single-process batch of
    W·B, so a DDP run can be compared with a single-process one (Trainer(use_distributed_sampler=False)).
    """

    def train_dataloader(self) -> DataLoader:
        if not self.datasets:
            self.setup()
        dataset = self.datasets["train"]
        sampler = DistributedSampler(dataset, shuffle=False) if dist.is_initialized() else None
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, shuffle=False)


class CrashAtEpoch(Callback):
    """Raises ``RuntimeError("CRASH")`` at the start of ``epoch``, as a killed job would stop."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("CRASH")
