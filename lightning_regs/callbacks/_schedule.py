"""What the training monitors share: the log-spaced measurement schedule, fixed point sets, DDP sharding.

A measurement at optimizer step ``g`` runs once, after the ``g``-th step (step 0: before the first),
writes its values straight to the Trainer's loggers at step ``g`` (``pl_module.log`` would drop values
between ``log_every_n_steps``) and keeps them in the callback state, from which the plots are drawn.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import Dataset

from lightning_regs.callbacks._plots import plot_curves, plot_directory, publish_figure
from lightning_regs.datamodules.batch import unpack_batch

__all__ = ["ScheduledMonitor", "draw_from_dataset", "measurement_steps"]


def measurement_steps(total_steps: int, num_measurements: int = 50, every_n_steps: int | None = None) -> list[int]:
    """Optimizer steps to measure at: step 0 and log-spaced steps up to ``total_steps``, or every ``n`` steps.

    The log-spaced schedule rounds ``logspace(0, log10(total_steps), num_measurements - 1)`` and drops
    duplicates (as the paper's code does), so short runs get fewer than ``num_measurements``.

    Example::

        >>> measurement_steps(1000, num_measurements=5)
        [0, 1, 10, 100, 1000]
        >>> measurement_steps(10, every_n_steps=4)
        [0, 4, 8, 10]
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps}; give the Trainer max_steps or max_epochs.")
    if every_n_steps is not None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be positive, got {every_n_steps}.")
        return sorted(set(range(0, total_steps + 1, every_n_steps)) | {total_steps})
    if num_measurements < 2:
        raise ValueError(f"num_measurements must be at least 2 (the start and the end), got {num_measurements}.")
    top = math.log10(total_steps)
    count = num_measurements - 1
    steps = {round(10 ** (top * i / max(count - 1, 1))) for i in range(count)}
    return sorted(steps | {0, total_steps})


def draw_from_dataset(
    dataset: Dataset, num_points: int | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_points`` (all when ``None`` or larger than the set) images and targets drawn without replacement."""
    size = len(dataset)  # type: ignore[arg-type]
    if num_points is None or num_points >= size:
        indices = torch.arange(size)
    else:
        indices = torch.randperm(size, generator=generator)[:num_points].sort().values
    images, targets = zip(*(unpack_batch(dataset[int(i)]) for i in indices), strict=True)
    image_tensor = torch.stack([torch.as_tensor(x) for x in images]).float()
    return image_tensor, torch.stack([torch.as_tensor(t) for t in targets])


def _dataset(trainer: pl.Trainer, split: str) -> Dataset:
    datamodule = trainer.datamodule
    if datamodule is None:
        raise RuntimeError(
            "The monitor draws its points from the Trainer's DataModule, and this run has none. Pass a "
            "LightningDataModule to `fit`, or give the points yourself with `monitor.set_points(...)` before fit."
        )
    loader = getattr(datamodule, f"{split}_dataloader")()
    return loader.dataset


class ScheduledMonitor(Callback):
    """Base of the monitors: schedule, measurement hooks, logging, history and DDP helpers.

    Subclasses implement :meth:`prepare` (draw the fixed points once), :meth:`measure` (return
    ``{name: value}``, identical on every rank) and :meth:`figure_spec` (what :meth:`plot` draws).
    """

    plot_at_end = False

    def __init__(self, num_measurements: int = 50, every_n_steps: int | None = None, seed: int = 0) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive number of optimizer steps, got {every_n_steps}.")
        if num_measurements < 2:
            raise ValueError(f"num_measurements must be at least 2, got {num_measurements}.")
        self.num_measurements = num_measurements
        self.every_n_steps = every_n_steps
        self.seed = seed
        self.steps: list[int] = []
        self.history: dict[str, list[float]] = {}
        self.measured_steps: list[int] = []
        self.points: dict[str, torch.Tensor] = {}
        self.measure_seconds = 0.0

    # -- subclass API ------------------------------------------------------------------------------
    def figure_spec(self) -> tuple[str, dict[str, list[float]], str, str]:
        """``(file stem, curves by name, y label, title)`` of the plot."""
        raise NotImplementedError

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.plot_at_end and self.measured_steps:
            self.plot(trainer)

    def plot(self, trainer: pl.Trainer) -> Path | None:
        """Plot the history against the step: to W&B with a ``WandbLogger``, else ``<log dir>/<stem>.png``."""
        directory = plot_directory(trainer)  # on every rank: a collective under DDP
        if not trainer.is_global_zero:
            return None
        stem, curves, ylabel, title = self.figure_spec()
        figure = plot_curves(self.measured_steps, curves, ylabel=ylabel, title=title)
        step = self.measured_steps[-1] if self.measured_steps else None
        return publish_figure(trainer, figure, stem, directory, step)

    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        raise NotImplementedError

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------------------------
    def dataset(self, trainer: pl.Trainer, split: str) -> Dataset:
        return _dataset(trainer, split)

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + offset)

    @staticmethod
    def shard(trainer: pl.Trainer, tensor: torch.Tensor) -> torch.Tensor:
        """Rank ``r``'s share of a point set: items ``r, r + W, ...``."""
        return tensor[trainer.global_rank :: trainer.world_size]

    @staticmethod
    def reduce_sum(trainer: pl.Trainer, tensor: torch.Tensor) -> torch.Tensor:
        if trainer.world_size == 1:
            return tensor
        return trainer.strategy.reduce(tensor.clone(), reduce_op="sum")

    def broadcast_points(self, trainer: pl.Trainer) -> None:
        # Every rank must measure rank 0's points (a rank-dependent DataModule would otherwise skew them).
        if trainer.world_size > 1:
            self.points = trainer.strategy.broadcast(self.points, src=0)

    # -- hooks -------------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.steps:
            total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
            if total is None:
                total = int(trainer.estimated_stepping_batches)
            self.steps = measurement_steps(total, self.num_measurements, self.every_n_steps)
        self.prepare(trainer, pl_module)  # fills only what is missing (nothing after a resume)
        self.broadcast_points(trainer)

    def _maybe_measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if step not in self.steps or (self.measured_steps and step <= self.measured_steps[-1]):
            return
        started = time.perf_counter()
        values = self.measure(trainer, pl_module)
        self.measure_seconds += time.perf_counter() - started
        self.measured_steps.append(step)
        for name, value in values.items():
            self.history.setdefault(name, []).append(float(value))
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)
        for name, value in values.items():
            trainer.callback_metrics[name] = torch.tensor(value)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == 0:
            self._maybe_measure(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._maybe_measure(trainer, pl_module)

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "measured_steps": list(self.measured_steps),
            "history": {name: list(values) for name, values in self.history.items()},
            "points": dict(self.points),
            "seed": self.seed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = [int(s) for s in state_dict.get("steps", [])]
        self.measured_steps = [int(s) for s in state_dict.get("measured_steps", [])]
        self.history = {name: [float(v) for v in values] for name, values in state_dict.get("history", {}).items()}
        self.points = dict(state_dict.get("points", {}))
