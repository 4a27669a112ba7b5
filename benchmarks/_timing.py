"""Shared pieces of the benchmark scripts: a step timer and a quiet Trainer."""

from __future__ import annotations

import statistics
import time
from typing import Any

from lightning.pytorch import Callback, Trainer

QUIET: dict[str, Any] = {
    "logger": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
    "num_sanity_val_steps": 0,
}


class StepTimer(Callback):
    """Wall time between consecutive training-batch starts, from ``from_epoch`` on (all callbacks included)."""

    def __init__(self, from_epoch: int = 1) -> None:
        self.from_epoch = from_epoch
        self.periods: list[float] = []
        self._last: float | None = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last is not None and trainer.current_epoch >= self.from_epoch and batch_idx > 0:
            self.periods.append(now - self._last)
        self._last = now

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        self._last = None

    @property
    def median(self) -> float:
        return statistics.median(self.periods)
