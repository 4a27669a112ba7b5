"""Small ScheduledMonitor subclasses the tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer

from lightning_regs.callbacks import ScheduledMonitor

__all__ = ["SaveHistories", "StepCounter"]


class SaveHistories(Callback):
    """Each rank writes the monitors' histories to ``<out_dir>/rank<r>.pt`` at the end of fit (ddp_spawn ranks
    return nothing else)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer: Trainer, pl_module: Any) -> None:
        histories = {}
        for callback in trainer.callbacks:
            histories.update(getattr(callback, "history", {}))
        torch.save(histories, Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


class StepCounter(ScheduledMonitor):
    """Measures the optimizer step itself: the history is the schedule that ran."""

    def prepare(self, trainer, pl_module):
        pass

    def cost_per_point(self):
        return 1.0

    def measure(self, trainer, pl_module):
        return {f"{self.prefix}/step": float(trainer.global_step)}

    def figure_spec(self):
        return "steps", self.history, "step", ""
