"""A monitor's plan in counted work: points per set, measurements and their steps (:class:`MonitorPlanning`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_regs.callbacks.monitor_schedule import (
    MAX_MEASUREMENTS,
    MAX_POINTS,
    MIN_MEASUREMENTS,
    MIN_POINTS,
    TRAIN_COST_PER_SAMPLE,
    auto_size,
    measurement_epochs,
    measurement_steps,
    planned_share,
)

__all__ = ["MonitorPlanning"]


class MonitorPlanning:
    """Mixin of :class:`~lightning_regs.callbacks.ScheduledMonitor`: make, re-make and announce the plan.

    The plan (see the ``ScheduledMonitor`` docstring) is made once before the first step, from the run's length, its
    global batch and the subclass's ``cost_per_point``; a resumed run of another length is planned again around
    the points already drawn.
    """

    # Set by ScheduledMonitor.__init__ (and restored from a checkpoint).
    steps: list[int]
    epochs: list[int]
    points_per_set: int | None
    total_steps: int | None
    planned_overhead: float | None
    points: dict[str, Any]

    def _plan(self, trainer: pl.Trainer, resumed: bool = False) -> None:
        """Points per set, measurements and their steps, from counted work only (see ScheduledMonitor's docstring).

        ``resumed``: the points are drawn already; their count stays and the schedule is fitted around it.
        """
        total_steps = _total_steps(trainer, type(self).__name__)
        self.total_steps = total_steps
        training_forwards = TRAIN_COST_PER_SAMPLE * total_steps * _global_batch(trainer)
        if self.every_n_epochs is not None:
            self.epochs = measurement_epochs(_total_epochs(trainer), self.every_n_epochs)
            measurements: int | None = len(self.epochs)
        elif self.every_n_steps is not None:
            measurements = len(measurement_steps(total_steps, every_n_steps=self.every_n_steps))
        else:
            measurements = self.num_measurements
        fixed_points = resumed and bool(self.points)
        if self.max_overhead is None:
            if not fixed_points:
                self.points_per_set = MAX_POINTS if self.num_points == "auto" else self.num_points
            measurements = measurements or MAX_MEASUREMENTS
            points = self.points_per_set or MAX_POINTS
        else:
            budget = self.max_overhead * training_forwards
            # "auto" is sized; the whole split (None) is budgeted as the largest point set.
            requested = None if self.num_points == "auto" else (self.num_points or MAX_POINTS)
            if fixed_points:
                requested = self.points_per_set or MAX_POINTS
            else:
                self.fit_cost_to(budget / ((measurements or MIN_MEASUREMENTS) * (requested or MIN_POINTS)))
            points, measurements = auto_size(budget, self.cost_per_point(), requested, measurements)
            planned = points * measurements * self.cost_per_point()
            if planned > budget * (1 + 1e-9):
                sets = f"{points} points" if self.num_points is not None else f"the whole split (counted as {points})"
                rank_zero_warn(
                    f"{type(self).__name__}: {measurements} measurements of {sets} cost about "
                    f"{planned / budget * self.max_overhead:.1%} of this run's forward passes, above "
                    f"max_overhead={self.max_overhead}; the floors (8 measurements, 16 points; 2 measurements with "
                    "num_points set) are measured anyway. Lower num_points or the schedule, or raise max_overhead."
                )
            if not fixed_points:
                self.points_per_set = None if self.num_points is None else points
        self.planned_overhead = planned_share(points, measurements, self.cost_per_point(), training_forwards)
        if self.every_n_epochs is None:
            self.steps = measurement_steps(total_steps, measurements, self.every_n_steps)

    def _run_length_changed(self, trainer: pl.Trainer) -> bool:
        """Whether a restored plan was made for another run length (its last epoch, or ``total_steps``)."""
        if self.every_n_epochs is not None:
            return bool(self.epochs) and self.epochs[-1] != _total_epochs(trainer)
        return self.total_steps != _total_steps(trainer, type(self).__name__)

    def _announce_plan(self) -> None:
        if self.every_n_epochs is not None:
            when = f"after epochs {self.epochs}"
        else:
            when = f"at steps {_abbreviated(self.steps)}"
        points = "the whole split" if self.points_per_set is None else f"{self.points_per_set} points per set"
        share = (
            f" = {self.planned_overhead:.1%} of the run's forward passes (max_overhead={self.max_overhead})"
            if self.planned_overhead is not None
            else ""
        )
        count = len(self.epochs) if self.every_n_epochs is not None else len(self.steps)
        rank_zero_info(f"{type(self).__name__}: {count} measurements of {points}{self.plan_details()} {when}{share}.")


def _total_steps(trainer: pl.Trainer, name: str) -> int:
    estimated = trainer.estimated_stepping_batches  # the smaller of max_steps and max_epochs' steps
    if estimated == float("inf"):
        raise ValueError(
            f"{name} plans its schedule over the run's optimizer steps, and this run's length is unknown (an "
            "iterable data set without a length and no max_steps): give the Trainer max_steps."
        )
    return int(estimated)


def _abbreviated(steps: Sequence[int]) -> str:
    return str(list(steps)) if len(steps) <= 12 else f"[{', '.join(map(str, steps[:6]))}, ..., {steps[-1]}]"


def _total_epochs(trainer: pl.Trainer) -> int:
    if trainer.max_epochs is None or trainer.max_epochs < 1:
        raise ValueError("every_n_epochs needs the Trainer's max_epochs; this run trains by steps: use every_n_steps.")
    return int(trainer.max_epochs)


def _global_batch(trainer: pl.Trainer) -> int:
    loader = trainer.train_dataloader
    size = getattr(loader, "batch_size", None)
    if size is None:
        size = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    return int(size or 32) * trainer.world_size * trainer.accumulate_grad_batches
