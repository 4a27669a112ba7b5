"""Taking one scheduled measurement: when it runs, what it logs, and NaN for non-finite weights or points
(:class:`MonitorMeasuring`)."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lightning_regs._compat import set_callback_metric
from lightning_regs.modes import uncompiled

__all__ = ["MonitorMeasuring"]


class MonitorMeasuring:
    """Mixin of :class:`~lightning_regs.callbacks.ScheduledMonitor`: run a measurement the schedule asks for.

    A measurement runs once per optimizer step at most, eagerly (hooks do not fire in compiled graphs), is logged
    to the Trainer's loggers at its step with ``<prefix>/overhead`` and kept in the history. Non-finite weights or
    points are not measured: every value of that measurement is NaN, with a warning. The opt-in
    ``wall_clock_overhead`` guard skips a measurement that would take the seconds measuring past its share.
    """

    # Set by ScheduledMonitor.__init__ (and at the start of each fit).
    prefix: str
    seed: int
    wall_clock_overhead: float | None
    history: dict[str, list[float]]
    measured_steps: list[int]
    skipped_steps: list[int]
    points: dict[str, torch.Tensor]
    measure_seconds: float
    _train_started: float
    _last_cost: float | None
    _last_checked_step: int | None

    def _maybe_measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch_end: bool) -> None:
        step = trainer.global_step
        if self.measured_steps and step <= self.measured_steps[-1]:
            return
        if step == self._last_checked_step and not epoch_end:  # gradient accumulation: one answer per step
            return
        self._last_checked_step = step
        if not self.should_measure(trainer, epoch_end):
            return
        if self.skipped_steps and self.skipped_steps[-1] == step:
            return
        if not self._within_wall_clock(trainer):
            self.skipped_steps.append(step)
            return
        started = time.perf_counter()
        nonfinite = self._nonfinite(trainer, pl_module)
        with uncompiled(pl_module):  # hooks do not fire in compiled graphs, and extra forwards would recompile
            if nonfinite:
                values = self._nan_measurement(trainer, pl_module, nonfinite)
            else:
                values = self.measure(trainer, pl_module)
        self._last_cost = time.perf_counter() - started
        self.measure_seconds += self._last_cost
        self.measured_steps.append(step)
        for name, value in values.items():
            self.history.setdefault(name, []).append(float(value))
        training = time.perf_counter() - self._train_started - self.measure_seconds
        logged = {**values, f"{self.prefix}/overhead": _ratio(self.measure_seconds, training)}
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=step)
        for name, value in values.items():
            set_callback_metric(trainer, name, value)

    def _nonfinite(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        """What is not finite: ``"weights"``, ``"points"``, both, or ``""`` (decided alike on every rank)."""
        model = self.model(pl_module)
        device = pl_module.device
        weights = [p.detach() for p in model.parameters() if p.is_floating_point()]
        points = [t for t in self.points.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
        flags = torch.stack([_any_nonfinite(weights, device), _any_nonfinite(points, device)]).cpu()  # one sync
        if trainer.world_size > 1:  # FSDP2 shards the weights: a NaN on one rank is a NaN on all
            flags = self.reduce_sum(trainer, flags.to(pl_module.device)).cpu()
        return " and ".join(what for what, bad in zip(("weights", "points"), flags.tolist(), strict=True) if bad)

    def _nan_measurement(self, trainer: pl.Trainer, pl_module: pl.LightningModule, what: str) -> dict[str, float]:
        """NaN for every value of a measurement of non-finite weights or points: they have no value to measure."""
        rank_zero_warn(
            f"{type(self).__name__}: non-finite (NaN or inf) {what} at step {trainer.global_step}: this measurement "
            "is logged as NaN, not measured (a diverged run has no value to measure; check the learning rate, or the "
            "data for NaN inputs)."
        )
        names = [name for name in self.history if not name.endswith("/overhead")]
        if not names:  # the first measurement: its names come from a stand-in measurement, whose values are dropped
            names = self._names_of_a_measurement(trainer, pl_module)
        return dict.fromkeys(names, math.nan)

    def _names_of_a_measurement(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[str]:
        """The names one measurement logs, read from a measurement with finite stand-ins for the non-finite values."""
        generator = torch.Generator().manual_seed(self.seed)

        def stand_in(tensor: torch.Tensor) -> torch.Tensor:
            noise = torch.randn(tensor.shape, generator=generator).to(tensor.device, tensor.dtype)
            return torch.where(torch.isfinite(tensor), tensor, noise)

        parameters = [p for p in self.model(pl_module).parameters() if p.is_floating_point()]
        saved_weights = [p.detach().clone() for p in parameters]
        saved_points = dict(self.points)
        try:
            with torch.no_grad():
                for parameter in parameters:
                    parameter.copy_(stand_in(parameter))
            self.points = {
                name: stand_in(t) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                for name, t in self.points.items()
            }
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return list(self.measure(trainer, pl_module))
        except (ValueError, RuntimeError, ArithmeticError, KeyError):
            return []
        finally:
            self.points = saved_points
            with torch.no_grad():
                for parameter, saved in zip(parameters, saved_weights, strict=True):
                    parameter.copy_(saved)

    def _within_wall_clock(self, trainer: pl.Trainer) -> bool:
        # The first measurement of each fit always runs (the same on every rank: no broadcast skipped).
        if self.wall_clock_overhead is None or self._last_cost is None:
            return True
        training = time.perf_counter() - self._train_started - self.measure_seconds
        decision = self.measure_seconds + self._last_cost <= self.wall_clock_overhead * training
        if trainer.world_size > 1:  # wall clocks differ across ranks; rank 0 decides for all
            decision = trainer.strategy.broadcast(decision, src=0)
        return bool(decision)


def _any_nonfinite(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """1.0 when any element of ``tensors`` (this rank's shards) is NaN or inf, else 0.0, on ``device`` (no sync)."""
    flags = [(~torch.isfinite(_local(tensor))).any().to(device) for tensor in tensors if tensor.numel()]
    return torch.stack(flags).any().float() if flags else torch.zeros((), device=device)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP2), the tensor itself otherwise."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 0.0
