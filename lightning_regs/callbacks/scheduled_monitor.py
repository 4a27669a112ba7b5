"""The base of every training monitor: when to measure, on which points, under DDP, and at what cost.

A measurement at optimizer step ``g`` runs once, after the ``g``-th step (step 0: before the first),
writes its values straight to the Trainer's loggers at step ``g`` (``pl_module.log`` would drop values
between ``log_every_n_steps``) and keeps them in the callback state, from which the plots are drawn.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_regs.callbacks._plots import MISSING_MATPLOTLIB, can_plot, plot_curves, plot_directory, publish_figure

# The parts of the base, one module each (their names stay importable from here):
from lightning_regs.callbacks.monitor_access import MonitorAccess
from lightning_regs.callbacks.monitor_checks import check_layer_names as check_layer_names
from lightning_regs.callbacks.monitor_checks import check_sets as check_sets
from lightning_regs.callbacks.monitor_measuring import MonitorMeasuring, _ratio
from lightning_regs.callbacks.monitor_measuring import _any_nonfinite as _any_nonfinite
from lightning_regs.callbacks.monitor_measuring import _local as _local
from lightning_regs.callbacks.monitor_planning import MonitorPlanning
from lightning_regs.callbacks.monitor_planning import _abbreviated as _abbreviated
from lightning_regs.callbacks.monitor_planning import _global_batch as _global_batch
from lightning_regs.callbacks.monitor_planning import _total_epochs as _total_epochs
from lightning_regs.callbacks.monitor_planning import _total_steps as _total_steps
from lightning_regs.callbacks.monitor_points import draw_from_dataset
from lightning_regs.callbacks.monitor_schedule import measurement_epochs, measurement_steps
from lightning_regs.callbacks.monitor_state import MonitorState
from lightning_regs.functional._checks import check_bool, check_int, check_number, check_string

__all__ = ["ScheduledMonitor", "draw_from_dataset", "measurement_epochs", "measurement_steps"]


class ScheduledMonitor(MonitorMeasuring, MonitorPlanning, MonitorAccess, MonitorState, Callback):
    """Base of the monitors: schedule, point sets, DDP sharding, logging, history, plots and cost.

    A subclass implements :meth:`prepare` (draw its fixed points once, with :meth:`draw_points`),
    :meth:`measure` (return ``{name: value}``, identical on every rank, with ``{name + "_se": error}``
    beside each value that has a sampling error), :meth:`cost_per_point` (forward passes of one sample
    per point and measurement, to size the defaults) and :meth:`figure_spec` (what :meth:`plot` draws).
    It may override :meth:`should_measure` and :meth:`fit_cost_to` (its own ``"auto"`` knobs).

    **Schedule** (one of): ``num_measurements`` log-spaced optimizer steps from step 0 to the end
    (the grokking paper's schedule), ``every_n_steps``, or ``every_n_epochs`` (measured after those
    epochs and before training). **Points**: ``num_points`` per set, drawn once from the Trainer's
    DataModule (``train`` and ``heldout_split``), or, when ``fit`` got DataLoaders and no DataModule,
    from the Trainer's own loaders; kept in the checkpoint, so a resumed run measures the same points.
    Under DDP and FSDP2 each rank measures its shard (:meth:`even_shard`: padded so that every rank runs
    the same forwards, which FSDP2's parameter gathering needs) and the sums are all-reduced
    (:meth:`reduce_sum`), so every rank logs the single-process value.

    **Cost, in counted work**: left at their defaults (``num_points="auto"``, ``num_measurements=None``),
    the plan (points per set, measurements, their steps) is fixed before the first step from the run's
    length, its global batch and :meth:`cost_per_point`, so that the monitor's forward passes stay within
    ``max_overhead`` of the training's (a training sample counted as 3 forwards): at least 8 log-spaced
    measurements (a curve), then 64 to 1024 points, then up to 50 measurements; the points go down to 16
    (and a subclass's own ``"auto"`` knobs, such as LC's directions, down to their floors) before the
    measurements go below 8. The plan depends on counted work only, never on the clock: the same config
    measures the same steps on any machine, load and rank count (at one global batch). It is printed when
    training starts, kept in the checkpoint, and planned again, with a message, when a resumed run has
    another length. A warning says when the floors exceed the budget. ``planned_overhead`` is the planned
    share; ``<prefix>/overhead`` logs the seconds measuring ÷ the seconds training (printed at the end).
    ``max_overhead=None`` measures the whole schedule at up to 1024 points, whatever it costs.
    ``wall_clock_overhead`` (off by default) adds a guard on seconds: a scheduled measurement is skipped
    when the seconds measuring would exceed that share of the seconds training (rank 0 decides). Its
    measured steps then depend on the machine.

    **Errors**: each logged mean over points comes with its standard error as ``<name>_se``
    (sample standard deviation over the points ÷ √N; bootstrap errors where the value is not a mean),
    drawn as a band in the plot.

    Args:
        num_measurements: log-spaced measurements over the run; ``None``: up to 50, as the budget allows.
        every_n_steps: measure every ``n`` optimizer steps instead.
        every_n_epochs: measure after every ``n`` epochs instead.
        num_points: points per set; ``"auto"``: 64 to 1024, as the budget allows; ``None``: the whole split.
        heldout_split: the split held-out points come from (``val`` or ``test``).
        submodule: measure ``pl_module.<submodule>`` (e.g. ``backbone``) instead of the whole LightningModule.
            Compiled parts (``torch.compile``) are measured eagerly: hooks do not fire inside compiled graphs.
        prefix: metric names are ``<prefix>/<quantity>``.
        max_overhead: the share of the training's forward passes the monitor's planned forwards may add
            (counted work, the same on every machine); ``None``: no limit.
        wall_clock_overhead: opt-in guard on seconds: skip a scheduled measurement that would take the
            seconds measuring past this share of the seconds training. Machine-dependent; ``None`` (default): off.
        batch_size: points per forward; ``None`` lets the subclass choose.
        plot: draw the plot at the end of training. Without matplotlib (the ``plots`` extra; the base install
            lacks it) the plot is skipped with one warning when fit starts; the measurements are logged as usual.
        seed: seed of the points and every random draw (never the global RNG).

    Example::

        >>> class WeightNorm(ScheduledMonitor):  # a monitor in a dozen lines
        ...     def prepare(self, trainer, pl_module):
        ...         pass
        ...     def cost_per_point(self):
        ...         return 1.0
        ...     def measure(self, trainer, pl_module):
        ...         norm = sum(p.detach().pow(2).sum() for p in self.model(pl_module).parameters()) ** 0.5
        ...         return {f"{self.prefix}/weight_norm": float(norm)}
        ...     def figure_spec(self):
        ...         return "weight_norm", self.history, "L2 norm", "weights"
        >>> from lightning.pytorch import Trainer
        >>> from lightning_regs.datamodules import DigitsDataModule
        >>> from lightning_regs.models import SmallCNN
        >>> from lightning_regs.tasks import ImageClassifier
        >>> monitor = WeightNorm(every_n_epochs=1, prefix="wn", plot=False, max_overhead=None)
        >>> trainer = Trainer(max_epochs=2, callbacks=[monitor], logger=False, enable_checkpointing=False,
        ...                   enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        >>> trainer.fit(ImageClassifier(SmallCNN(width=8), num_classes=10), DigitsDataModule())
        >>> len(monitor.measured_steps), sorted(monitor.history)
        (3, ['wn/weight_norm'])
    """

    ylog: bool = False  # the plot's y axis: logarithmic for quantities that fall by orders of magnitude

    def __init__(
        self,
        num_measurements: int | None = None,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        num_points: int | Literal["auto"] | None = "auto",
        heldout_split: str = "val",
        submodule: str | None = None,
        prefix: str = "monitor",
        max_overhead: float | None = 0.1,
        batch_size: int | None = None,
        plot: bool = True,
        seed: int = 0,
        wall_clock_overhead: float | None = None,
    ) -> None:
        owner = type(self).__name__
        schedules = {
            "num_measurements": num_measurements,
            "every_n_steps": every_n_steps,
            "every_n_epochs": every_n_epochs,
        }
        given = [name for name, value in schedules.items() if value is not None]
        if len(given) > 1:
            raise ValueError(f"Give one schedule: num_measurements, every_n_steps or every_n_epochs; got {given}.")
        for name, value in (("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None:
                check_int(owner, name, value, low=1)
        if num_measurements is not None:
            check_int(owner, "num_measurements (at least 2: the start and the end)", num_measurements, low=2)
        if num_points != "auto" and num_points is not None:
            check_int(owner, "num_points (or 'auto', or None: the whole split)", num_points, low=1)
        if heldout_split not in ("val", "test"):
            raise ValueError(
                f"{owner}: heldout_split must be 'val' or 'test' (the split held-out points come from), got "
                f"{heldout_split!r}."
            )
        if submodule is not None and not isinstance(submodule, str):
            raise TypeError(
                f"{owner}: submodule must be a dotted attribute path (str) or None, got {submodule!r} "
                f"({type(submodule).__name__})."
            )
        check_string(owner, "prefix", prefix)
        if max_overhead is not None:
            check_number(owner, "max_overhead (or None: no bound)", max_overhead, low=0, low_open=True)
        if wall_clock_overhead is not None:
            check_number(owner, "wall_clock_overhead (or None: off)", wall_clock_overhead, low=0, low_open=True)
        if batch_size is not None:
            check_int(owner, "batch_size (or None)", batch_size, low=1)
        check_bool(owner, "plot", plot)
        check_int(owner, "seed", seed, low=0)
        self.num_measurements = num_measurements
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.num_points = num_points
        self.heldout_split = heldout_split
        self.submodule = submodule
        self.prefix = prefix
        self.max_overhead = max_overhead
        self.wall_clock_overhead = wall_clock_overhead
        self.batch_size = batch_size
        self.plot_at_end = plot
        self.seed = seed
        self.steps: list[int] = []  # the scheduled optimizer steps (step schedules)
        self.epochs: list[int] = []  # the scheduled finished-epoch counts (epoch schedules)
        self.points_per_set: int | None = None  # num_points resolved at the start of training
        self.total_steps: int | None = None  # the run length the plan was made for
        self.planned_overhead: float | None = None  # planned forwards ÷ the training's (counted work)
        self.history: dict[str, list[float]] = {}
        self.measured_steps: list[int] = []
        self.skipped_steps: list[int] = []
        self.points: dict[str, torch.Tensor] = {}
        self.measure_seconds = 0.0
        self._train_started = 0.0
        self._last_cost: float | None = None  # None until the first measurement of this fit
        self._last_checked_step: int | None = None

    # -- what a subclass implements ----------------------------------------------------------------
    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fill :attr:`points` with what is missing (nothing after a resume), with :meth:`draw_points`."""
        raise NotImplementedError

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """One measurement: ``{"<prefix>/<quantity>": value}``, the same on every rank."""
        raise NotImplementedError

    def cost_per_point(self) -> float:
        """Forward passes of one sample that one point costs in one measurement, over all point sets."""
        raise NotImplementedError

    def figure_spec(self) -> tuple[str, dict[str, list[float]], str, str]:
        """``(file stem, curves by name, y label, title)`` of the plot."""
        raise NotImplementedError

    def fit_cost_to(self, forwards_per_point: float) -> None:
        """Resolve the subclass's own ``"auto"`` knobs so one point costs at most ``forwards_per_point``, if it can.

        Called once, when the plan is made (not on resume), with what the budget allows per point at 8
        measurements of 64 points; :meth:`cost_per_point` is read after it. The default has no knobs.
        """

    def plan_details(self) -> str:
        """What a subclass adds to the printed plan (e.g. ``", P = 5 directions"``)."""
        return ""

    def should_measure(self, trainer: pl.Trainer, epoch_end: bool) -> bool:
        """Whether the schedule asks for a measurement now, after optimizer step ``trainer.global_step``.

        Asked once per optimizer step (before the first step too) with ``epoch_end`` telling whether the
        step ends the training epoch; override to measure on other events. The same answer must come on
        every rank.
        """
        if self.every_n_epochs is not None:
            return trainer.global_step == 0 or (epoch_end and trainer.current_epoch + 1 in self.epochs)
        return trainer.global_step in self.steps

    # -- plot --------------------------------------------------------------------------------------
    def plot(self, trainer: pl.Trainer) -> Path | None:
        """Plot the history against the step: to W&B with a ``WandbLogger``, else ``<log dir>/<stem>.png``."""
        directory = plot_directory(trainer)  # on every rank: a collective under DDP
        if not trainer.is_global_zero:
            return None
        stem, curves, ylabel, title = self.figure_spec()
        curves = {name: values for name, values in curves.items() if not name.endswith("_se")}
        errors = {name: self.history[f"{name}_se"] for name in curves if f"{name}_se" in self.history}
        figure = plot_curves(self.measured_steps, curves, ylabel=ylabel, title=title, ylog=self.ylog, errors=errors)
        step = self.measured_steps[-1] if self.measured_steps else None
        return publish_figure(trainer, figure, stem, directory, step)

    # -- hooks -------------------------------------------------------------------------------------
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Checked here, not when the plot is drawn: a missing extra must not fail a finished run.
        if self.plot_at_end and not can_plot():
            self.plot_at_end = False
            rank_zero_warn(
                f"{type(self).__name__} will not draw its plot at the end of training: {MISSING_MATPLOTLIB}. "
                f"Its measurements are logged as usual; pass plot=False to silence this warning."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.steps and not self.epochs:
            self._plan(trainer)
            self._announce_plan()
        elif self._run_length_changed(trainer):
            before = self.total_steps
            self._plan(trainer, resumed=True)
            rank_zero_info(
                f"{type(self).__name__}: the resumed run has {self.total_steps} optimizer steps, not the {before} its "
                "measurements were planned for; planned again over the new length (measurements taken are kept)."
            )
            self._announce_plan()
        with torch.random.fork_rng(devices=[]):  # augmenting data sets draw from the global RNG: keep it untouched
            self.prepare(trainer, pl_module)  # fills only what is missing (nothing after a resume)
        if trainer.world_size > 1:  # every rank measures rank 0's points
            self.points = trainer.strategy.broadcast(self.points, src=0)
        self.measure_seconds = 0.0
        self._last_cost = None
        self._last_checked_step = None
        self._train_started = time.perf_counter()

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == 0:
            self._maybe_measure(trainer, pl_module, epoch_end=False)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # The epoch's last batch, not on_train_epoch_end: a checkpoint saved at validation end (before
        # on_train_epoch_end) must already hold the epoch's measurement.
        self._maybe_measure(trainer, pl_module, epoch_end=batch_idx + 1 >= trainer.num_training_batches)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._maybe_measure(trainer, pl_module, epoch_end=True)  # epochs of unknown length (iterable data)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.measured_steps:
            training = time.perf_counter() - self._train_started - self.measure_seconds
            skipped = (
                f", {len(self.skipped_steps)} skipped to stay within wall_clock_overhead" if self.skipped_steps else ""
            )
            count = f"{len(self.measured_steps)} measurement{_plural(self.measured_steps)}"
            counted = f"planned {self.planned_overhead:.1%} of the forward passes; " if self.planned_overhead else ""
            rank_zero_info(
                f"{type(self).__name__}: {count}{skipped}, {counted}"
                f"{self.measure_seconds:.1f} s measuring = {_ratio(self.measure_seconds, training):.1%} of "
                f"{training:.1f} s training."
            )
        if self.plot_at_end and self.measured_steps:
            self.plot(trainer)


def _plural(items: Sequence[Any]) -> str:
    return "" if len(items) == 1 else "s"
