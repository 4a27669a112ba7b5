"""Shared pieces of the benchmark scripts: a step timer, a quiet Trainer, a timed fit-then-test, mean ± std."""

from __future__ import annotations

import statistics
import time
from typing import Any

from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer

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


def fit_and_test(
    task: LightningModule, data: LightningDataModule, epochs: int, callbacks: list[Callback] | None = None
) -> tuple[dict[str, float], float]:
    """Fit on one CPU process (deterministic, no validation), then test; returns the test metrics and fit seconds."""
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks or [],
        deterministic=True,
        limit_val_batches=0,
        **QUIET,
    )
    start = time.perf_counter()
    trainer.fit(task, data)
    seconds = time.perf_counter() - start
    (metrics,) = trainer.test(task, data, verbose=False)
    return metrics, seconds


def summary(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` of ``values`` times ``scale`` (std 0 for one value), to ``digits`` decimals."""
    spread = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{statistics.mean(values) * scale:.{digits}f} ± {spread:.{digits}f}"
