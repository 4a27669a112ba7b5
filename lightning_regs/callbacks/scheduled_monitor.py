"""The base of every training monitor: when to measure, on which points, under DDP, and at what cost.

A measurement at optimizer step ``g`` runs once, after the ``g``-th step (step 0: before the first),
writes its values straight to the Trainer's loggers at step ``g`` (``pl_module.log`` would drop values
between ``log_every_n_steps``) and keeps them in the callback state, from which the plots are drawn.
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import Dataset
from typing_extensions import override

from lightning_regs._compat import COMPILED_WRAPPER_ATTRIBUTE, set_callback_metric
from lightning_regs.callbacks._plots import MISSING_MATPLOTLIB, can_plot, plot_curves, plot_directory, publish_figure
from lightning_regs.callbacks.monitor_points import draw_from_dataset, trainer_loaders
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
from lightning_regs.functional._checks import check_bool, check_int, check_number, check_string
from lightning_regs.functional.modes import uncompiled, unwrap_compiled

__all__ = ["ScheduledMonitor", "draw_from_dataset", "measurement_epochs", "measurement_steps"]


class ScheduledMonitor(Callback):
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

    # -- helpers for subclasses --------------------------------------------------------------------
    def model(self, pl_module: pl.LightningModule) -> torch.nn.Module:
        """The module measured: ``pl_module`` or its ``submodule``, unwrapped if compiled."""
        if not self.submodule:
            return unwrap_compiled(pl_module)
        path = ".".join(
            part for part in self.submodule.split(".") if part != COMPILED_WRAPPER_ATTRIBUTE
        )  # a path through the wrapper
        try:
            return unwrap_compiled(pl_module.get_submodule(path))
        except AttributeError:
            names = [name for name, _ in pl_module.named_children()]
            raise ValueError(
                f"{type(self).__name__}(submodule={self.submodule!r}): {type(pl_module).__name__} has no such "
                f"submodule; its children are {names}."
            ) from None

    def dataset(self, trainer: pl.Trainer, split: str) -> Dataset:
        """The data set of ``split``: the DataModule's, else the one of the loaders given to ``fit``.

        From a lightning_regs DataModule the training split comes with the evaluation transform
        (``evaluation_dataset``): clean images, not augmented views. Loaders given to ``fit`` are used
        as they are; give clean points with ``set_points`` when their data set augments.
        """
        datamodule = trainer.datamodule
        if datamodule is not None:
            if hasattr(datamodule, "evaluation_dataset"):  # training points without augmentation
                return datamodule.evaluation_dataset(split)
            return getattr(datamodule, f"{split}_dataloader")().dataset
        loaders = trainer_loaders(trainer, split)
        if not loaders:
            raise RuntimeError(
                f"{type(self).__name__} draws its {split!r} points from the Trainer's data, and this run has no "
                f"{split} data: pass {split}_dataloaders to fit (or a DataModule), choose another heldout_split, "
                "or give the points with set_points(...) before fit."
            )
        return loaders[0].dataset

    def draw_points(self, trainer: pl.Trainer, split: str, offset: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """:attr:`points_per_set` images and targets from ``split``, drawn from the private generator."""
        return draw_from_dataset(self.dataset(trainer, split), self.points_per_set, self.generator(offset))

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(**self.state_key_fields())

    def state_key_fields(self) -> dict[str, Any]:
        """What tells two monitors of one class apart in a checkpoint; extend it in subclasses.

        ``prefix`` and ``heldout_split`` count only when not at their defaults: a monitor at its defaults keeps
        the shortest key.
        """
        fields: dict[str, Any] = {}
        if self.prefix != type(self)._default("prefix"):
            fields["prefix"] = self.prefix
        if self.heldout_split != "val":
            fields["heldout_split"] = self.heldout_split
        return fields

    @classmethod
    def _default(cls, name: str) -> Any:
        return inspect.signature(cls.__init__).parameters[name].default

    def generator(self, offset: int = 0) -> torch.Generator:
        """A generator seeded by ``seed`` and ``offset``: draws that never touch the global RNG."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + offset)

    @staticmethod
    def shard(trainer: pl.Trainer, tensor: torch.Tensor) -> torch.Tensor:
        """Rank ``r``'s share of a point set: items ``r, r + W, ...``."""
        return tensor[trainer.global_rank :: trainer.world_size]

    @staticmethod
    def even_shard(trainer: pl.Trainer, tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Rank ``r``'s share (items ``r, r + W, ...``) padded to ``ceil(N / W)`` rows, and how many rows are real.

        The padding repeats the set's first item after the real rows; give it weight 0 in the sums. Every
        rank then runs the same number of forwards in the same chunks, which FSDP2 needs: its forwards
        gather the parameters, a collective all ranks must join. On one process nothing is padded.

        Example::

            >>> from types import SimpleNamespace
            >>> rank1 = SimpleNamespace(global_rank=1, world_size=2)
            >>> shard, real = ScheduledMonitor.even_shard(rank1, torch.arange(5))
            >>> shard.tolist(), real
            ([1, 3, 0], 2)
        """
        shard = tensor[trainer.global_rank :: trainer.world_size]
        real = shard.shape[0]
        rows = -(-tensor.shape[0] // trainer.world_size)
        if real < rows:
            shard = torch.cat([shard, tensor[:1].expand(rows - real, *tensor.shape[1:])])
        return shard, real

    @staticmethod
    def reduce_sum(trainer: pl.Trainer, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over the ranks (itself on one process)."""
        if trainer.world_size == 1:
            return tensor
        return trainer.strategy.reduce(tensor.clone(), reduce_op="sum")

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

    # -- state -------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "epochs": list(self.epochs),
            "points_per_set": self.points_per_set,
            "total_steps": self.total_steps,
            "planned_overhead": self.planned_overhead,
            "measured_steps": list(self.measured_steps),
            "skipped_steps": list(self.skipped_steps),
            "history": {name: list(values) for name, values in self.history.items()},
            "points": dict(self.points),
            "seed": self.seed,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = [int(s) for s in state_dict.get("steps", [])]
        self.epochs = [int(e) for e in state_dict.get("epochs", [])]
        self.points_per_set = state_dict.get("points_per_set")
        self.total_steps = state_dict.get("total_steps")
        self.planned_overhead = state_dict.get("planned_overhead")
        self.measured_steps = [int(s) for s in state_dict.get("measured_steps", [])]
        self.skipped_steps = [int(s) for s in state_dict.get("skipped_steps", [])]
        self.history = {name: [float(v) for v in values] for name, values in state_dict.get("history", {}).items()}
        self.points = dict(state_dict.get("points", {}))

    # -- internals ---------------------------------------------------------------------------------
    def _plan(self, trainer: pl.Trainer, resumed: bool = False) -> None:
        """Points per set, measurements and their steps, from counted work only (see the class docstring).

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


def check_sets(owner: str, sets: str | Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
    """The point sets a monitor measures: one name (a str) or a non-empty sequence of distinct names of ``allowed``."""
    names = [sets] if isinstance(sets, str) else sets
    if not isinstance(names, Sequence):
        raise TypeError(f"{owner}: sets must be a name or a list of names of {list(allowed)}, got {sets!r}.")
    names = list(names)
    unknown = [name for name in names if name not in allowed]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if not names or unknown or duplicated:
        problem = f": {unknown} are not sets" if unknown else f": {duplicated} appear more than once" if names else ""
        raise ValueError(
            f"{owner}: sets must be a non-empty list of distinct names of {list(allowed)}, got {names!r}{problem}."
        )
    return tuple(names)


def check_layer_names(owner: str, layers: str | Sequence[str], name: str = "layers") -> list[str]:
    """Module names: one (a str) or a non-empty list of distinct non-empty strings."""
    names = [layers] if isinstance(layers, str) else layers
    if not isinstance(names, Sequence) or not all(isinstance(layer, str) and layer for layer in names):
        raise TypeError(f"{owner}: {name} must be module names (non-empty strs), got {layers!r}.")
    names = list(names)
    duplicated = sorted({layer for layer in names if names.count(layer) > 1})
    if not names or duplicated:
        problem = f": {duplicated} appear more than once" if duplicated else ""
        raise ValueError(f"{owner}: {name} must be a non-empty list of distinct module names, got {names!r}{problem}.")
    return names


def _plural(items: Sequence[Any]) -> str:
    return "" if len(items) == 1 else "s"


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 0.0


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
