"""Print the run's final metrics and wall time, so a finished run says how it went."""

from __future__ import annotations

import time

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from lightning_regs.callbacks.scheduled_monitor import ScheduledMonitor

__all__ = ["MetricsSummary"]


def _last_measured_steps(trainer: pl.Trainer) -> dict[str, int]:
    """The step of each monitor metric's last measurement: a monitor that skipped the end must not read as final."""
    return {
        name: monitor.measured_steps[-1]
        for monitor in trainer.callbacks
        if isinstance(monitor, ScheduledMonitor) and monitor.measured_steps
        for name in monitor.history
    }


class MetricsSummary(Callback):
    """At the end of ``fit``, ``validate`` and ``test``, print the logged metrics and the wall time.

    Printed on global rank zero only, sorted by name, as a two-column table. The values are
    ``trainer.callback_metrics`` (the last epoch's, already reduced across ranks). A monitor's metric whose last
    measurement came before the final step (a schedule that ends earlier, or ``wall_clock_overhead`` skipping it)
    says at which step.

    Args:
        prefixes: print only metrics whose name starts with one of these (a str is one prefix; all when empty).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[MetricsSummary(prefixes=("val/",))], logger=False)
    """

    def __init__(self, prefixes: str | tuple[str, ...] = ()) -> None:
        given = (prefixes,) if isinstance(prefixes, str) else prefixes  # one str is one prefix, not its letters
        if not isinstance(given, (tuple, list)) or not all(isinstance(prefix, str) for prefix in given):
            raise TypeError(
                f"MetricsSummary: prefixes must be a str or a list of strs (metric name prefixes such as 'val/'), "
                f"got {prefixes!r}."
            )
        if any(not prefix for prefix in given):
            raise ValueError(
                f"MetricsSummary: prefixes must be non-empty strs (an empty prefix matches every metric: pass () for "
                f"all), got {prefixes!r}."
            )
        self.prefixes = tuple(given)
        self._started: dict[str, float] = {}

    def _start(self, stage: str) -> None:
        self._started[stage] = time.perf_counter()

    def format_summary(self, trainer: pl.Trainer, stage: str) -> str:
        """The table :meth:`report` prints."""
        elapsed = time.perf_counter() - self._started.get(stage, time.perf_counter())
        metrics = {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if value.numel() == 1 and (not self.prefixes or name.startswith(self.prefixes))
        }
        width = max((len(name) for name in metrics), default=10)
        measured = _last_measured_steps(trainer)
        lines = [f"{stage} finished in {elapsed:.1f} s (epochs: {trainer.current_epoch}, steps: {trainer.global_step})"]
        for name, value in sorted(metrics.items()):
            step = measured.get(name)
            when = (
                f"  (measured at step {step}, not at the end)"
                if step is not None and step < trainer.global_step
                else ""
            )
            lines.append(f"  {name:<{width}}  {value:.4f}{when}")
        return "\n".join(lines)

    @rank_zero_only
    def report(self, trainer: pl.Trainer, stage: str) -> None:
        print(self.format_summary(trainer, stage), flush=True)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("fit")

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.report(trainer, "fit")

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._start("validate")

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self.report(trainer, "validate")

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("test")

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.report(trainer, "test")
