"""Shared pieces of the representation-monitor benchmarks: the quickstart recipe, the cost at defaults, figures."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import Logger

from lightning_regs.callbacks import ScheduledMonitor
from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.models import SmallCNN
from lightning_regs.tasks import ImageClassifier

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "methods" / "figures"
QUIET: dict[str, Any] = {
    "logger": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
    "num_sanity_val_steps": 0,
    "accelerator": "cpu",
    "devices": 1,
}


def setup() -> None:
    """One thread (two shared cores: two threads oversubscribe the float64 eigensolvers) and quiet Lightning."""
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)


def quickstart_task(weight_decay: float = 5e-4) -> ImageClassifier:
    """examples/quickstart.yaml's model: SmallCNN width 32, SGD 0.05 Nesterov, cosine, one warm-up epoch."""
    return ImageClassifier(
        SmallCNN(num_classes=10, in_channels=1, width=32), 10, optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True,
        weight_decay=weight_decay, scheduler="cosine", warmup_epochs=1,
    )  # fmt: skip


class LastValues(Logger):
    """Keeps the last logged value of every metric (what a monitor logs as ``<prefix>/overhead``)."""

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[str, float] = {}

    name, version = "last", 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.last.update({key: float(value) for key, value in metrics.items()})

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass


def fit_seconds(callbacks: list[Callback], epochs: int, seed: int = 0) -> tuple[float, dict[str, float]]:
    """Seconds of one fit of the quickstart recipe (no validation) and the last value of every logged metric."""
    seed_everything(seed, verbose=False)
    logger = LastValues()
    with tempfile.TemporaryDirectory() as root:  # where the monitor's end-of-fit plot goes (its default: on)
        trainer = Trainer(
            max_epochs=epochs, callbacks=callbacks, limit_val_batches=0, default_root_dir=root,
            **{**QUIET, "logger": logger},
        )  # fmt: skip
        started = time.perf_counter()
        trainer.fit(quickstart_task(), DigitsDataModule(batch_size=64, seed=seed))
        return time.perf_counter() - started, logger.last


def overhead_at_defaults(make_monitor: Callable[[], ScheduledMonitor], epochs: int = 20, repeats: int = 3) -> None:
    """Fit the quickstart recipe without and with the monitor at its defaults, alternating; print the costs."""
    print(f"quickstart recipe (SmallCNN, digits, batch 64, {epochs} epochs), 1 thread:", flush=True)
    for repeat in range(repeats):
        baseline, _ = fit_seconds([], epochs)
        monitor = make_monitor()
        seconds, logged = fit_seconds([monitor], epochs)
        print(
            f"  run {repeat}: {type(monitor).__name__} points/set {monitor.points_per_set}, "
            f"{len(monitor.measured_steps)} measured, {len(monitor.skipped_steps)} skipped; "
            f"{monitor.prefix}/overhead {logged[f'{monitor.prefix}/overhead']:.1%}; "
            f"fit {seconds:.1f} s = {seconds / baseline:.3f}x the fit without it ({baseline:.1f} s)",
            flush=True,
        )
