"""Track each layer's place in the information plane, I(X;T) and I(T;Y), over training.

The monitor and its arguments: :class:`InformationPlaneMonitor`; the estimators:
:mod:`lightning_regs.functional.information_plane` and :mod:`lightning_regs.functional.information_plane_knn`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import nn
from typing_extensions import override

from lightning_regs.callbacks._features import FeatureTap, gathered_features
from lightning_regs.callbacks._information_plane_plot import information_plane_figure
from lightning_regs.callbacks._labelled_points import SETS, LabelledPointsMonitor
from lightning_regs.callbacks._layer_taps import layer_tap, measured_layers
from lightning_regs.callbacks._plots import plot_directory, publish_figure
from lightning_regs.callbacks.monitor_points import draw_from_dataset
from lightning_regs.callbacks.scheduled_monitor import check_layer_names
from lightning_regs.functional._checks import check_choice, check_int, check_number
from lightning_regs.functional.bootstrap import derive_seed, half_sample_errors
from lightning_regs.functional.information_plane import InformationPlanePoint, adaptive_binning, kde_upper
from lightning_regs.functional.information_plane_knn import lossy_knn
from lightning_regs.modes import uncompiled

__all__ = ["InformationPlaneMonitor"]

Estimator = Literal["adaptive_binning", "kde_upper", "lossy_knn"]
ESTIMATORS = ("adaptive_binning", "kde_upper", "lossy_knn")
#: One layer's estimate per probe point, in forwards of one digit through the quickstart SmallCNN (width 32), for a
#: layer of d units at N = 512, one thread: a + b·d (binning sorts the N·d values; the KDE forms the N × N Gram
#: matrix; the kNN projects on 8 principal directions and forms the N × N distances), and each half-sample a share h
#: of it. (a, b, h) from `python benchmarks/information_plane_digits.py --calibrate`; the N² parts grow with N.
COST = {"adaptive_binning": (0.02, 0.00135, 0.5), "kde_upper": (0.11, 0.00035, 0.3), "lossy_knn": (0.15, 0.001, 0.45)}
ASSUMED_WIDTHS = (256, 256)  # before the layers are read (a plan is made after they are)


class InformationPlaneMonitor(LabelledPointsMonitor):
    """Log ``I(X;T)`` and ``I(T;Y)`` (bits) of each layer ``T`` on a fixed probe set: the information plane.

    At each scheduled step the probe images go through the model in eval mode; each layer's output (flattened per
    image) is gathered from all ranks in the probe's order, and rank 0 computes, in float64 on the CPU, with one of:

    - ``"adaptive_binning"`` (Chelombiev et al. 2019; :func:`~lightning_regs.functional.adaptive_binning`):
      ``num_bins`` bins with edges at quantiles of the layer's distinct values, plug-in entropies of the codes.
      The lowest edge is −1.000001 for an ``nn.Tanh`` layer, 0 for a layer whose values are all ``≥ 0`` (ReLU),
      else the smallest value. ``I(X;T) ≤ log2 N`` and saturates there for wide layers.
    - ``"kde_upper"`` (Kolchinsky & Tracey's bound, Saxe et al. 2018; :func:`~lightning_regs.functional.kde_upper`):
      Gaussian noise of absolute standard deviation ``sigma`` on ``T``. ``I(X;T) ≤ log2 N`` too.
    - ``"lossy_knn"`` (after Butakov et al. 2024; :func:`~lightning_regs.functional.lossy_knn`): noise of
      ``noise_ratio`` × the activations' standard deviation, the first ``num_components`` principal components, a
      ``k``-nearest-neighbour entropy. Not capped at ``log2 N``; every class needs more than ``k`` probe points.

    Logged: ``<prefix>/<layer>/ixt`` and ``<prefix>/<layer>/ity`` (for the held-out probe ``<layer>@heldout``),
    each with ``_se``, and ``<prefix>/overhead``. The plot (``information_plane.png``, or W&B) draws ``I(T;Y)``
    against ``I(X;T)``, one line per layer, the points coloured by the measured step. Results depend on the
    estimator and its scale (``num_bins``, ``sigma``, ``noise_ratio``): compare runs with one setting and one
    ``num_points``.

    **Errors.** ``<name>_se`` is a half-sampling standard error (as
    :class:`~lightning_regs.callbacks.DiffusionSpectralEntropyMonitor`'s): ``subsamples`` subsets of ``⌊N/2⌋``
    distinct probe points (the same subsets for every layer), on which the estimator runs again (bin edges, PCA
    and noise included); the error is their standard deviation × ``√(m/(N−m))``
    (:func:`~lightning_regs.functional.half_sample_errors`). A half-sample in which a class has ``k`` points or
    fewer gives no ``lossy_knn`` ``I(T';Y)`` and is left out of that spread (NaN when fewer than two remain: give
    ``lossy_knn`` a probe with well over ``2(k + 1)`` points of every class). The subsets and the ``lossy_knn``
    noise come from private generators seeded by ``derive_seed(seed, step, set)`` (the subsets) and
    ``derive_seed(seed, step, set, 1)`` (the noise of the logged values), with ``set`` 0 for ``train`` and 1 for
    ``heldout``.

    Args:
        estimator: ``"adaptive_binning"`` (default), ``"kde_upper"`` or ``"lossy_knn"``.
        layers: names of modules (in ``pl_module``, or in ``submodule``) whose outputs are measured, and/or
            ``"penultimate"`` (the classifier's input). ``None`` (default): the output of every activation module of
            the ReLU family or ``nn.Tanh`` that runs once per forward (a module that runs more often, such as the
            ``relu`` a torchvision block calls twice, is left out with a warning). Read, with their widths, by one
            forward of one training image when training starts, before the plan is made.
        num_bins: bins per layer (``adaptive_binning``; 30 in the paper).
        sigma: the noise's standard deviation, in the layer's units (``kde_upper``).
        noise_ratio: the noise as a share of the activations' standard deviation (``lossy_knn``).
        num_components: principal components of the noisy layer (``lossy_knn``).
        k: the neighbour of the entropy estimate (``lossy_knn``).
        subsamples: half-samples of the ``_se`` errors; 0 logs no errors.
        sets: probe sets, of ``train`` (clean training images) and ``heldout``; default ``train``.
        num_measurements, every_n_steps, every_n_epochs, num_points, heldout_split, submodule, prefix,
            max_overhead, wall_clock_overhead, batch_size, plot, seed: see
            :class:`~lightning_regs.callbacks.ScheduledMonitor` (``num_points``: the probe size ``N``;
            ``batch_size``: points per forward, 512 when ``None``).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> monitor = InformationPlaneMonitor(estimator="kde_upper", num_points=500, every_n_epochs=1)
        >>> trainer = Trainer(callbacks=[monitor], logger=False, max_epochs=20)
    """

    def __init__(
        self,
        estimator: Estimator = "adaptive_binning",
        layers: str | Sequence[str] | None = None,
        num_bins: int = 30,
        sigma: float = 0.01,
        noise_ratio: float = 0.1,
        num_components: int = 8,
        k: int = 5,
        subsamples: int = 8,
        sets: Sequence[str] = ("train",),
        num_points: int | Literal["auto"] | None = "auto",
        heldout_split: str = "val",
        every_n_epochs: int | None = None,
        every_n_steps: int | None = None,
        num_measurements: int | None = None,
        submodule: str | None = None,
        batch_size: int | None = None,
        prefix: str = "ip",
        max_overhead: float | None = 0.05,
        plot: bool = True,
        seed: int = 0,
        wall_clock_overhead: float | None = None,
    ) -> None:
        super().__init__(
            sets=sets, num_measurements=num_measurements, every_n_steps=every_n_steps, every_n_epochs=every_n_epochs,
            num_points=num_points, heldout_split=heldout_split, submodule=submodule, prefix=prefix,
            max_overhead=max_overhead, batch_size=batch_size, plot=plot, seed=seed,
            wall_clock_overhead=wall_clock_overhead,
        )  # fmt: skip
        owner = type(self).__name__
        check_choice(owner, "estimator", estimator, ESTIMATORS)
        names = None if layers is None else check_layer_names(owner, layers)
        for name, value, least in (("num_bins", num_bins, 2), ("num_components", num_components, 1), ("k", k, 1)):
            check_int(owner, name, value, low=least)
        for name, value in (("sigma", sigma), ("noise_ratio", noise_ratio)):
            check_number(owner, name, value, low=0, low_open=True)
        check_int(owner, "subsamples", subsamples, low=0)
        if subsamples == 1:
            raise ValueError(f"{owner}: subsamples must be 0 (no errors) or at least 2 (a spread), got {subsamples!r}.")
        self.estimator: Estimator = estimator
        self.layers = names
        self.num_bins, self.sigma, self.noise_ratio = num_bins, float(sigma), float(noise_ratio)
        self.num_components, self.k, self.subsamples = num_components, k, subsamples
        self._found_layers: list[str] | None = None  # the layers measured, read when training starts
        self.layer_widths: list[int] | None = None  # their units (features per image), read with them

    @override
    def state_key_fields(self) -> dict[str, Any]:
        layers = self.layers if self.layers is not None else "activations"
        return {**super().state_key_fields(), "estimator": self.estimator, "layers": layers, "sets": self.sets}

    @override
    def cost_per_point(self) -> float:
        # One eval forward per point and set, and each layer's estimate with its half-samples (COST: in forwards of
        # the quickstart SmallCNN; a model whose forward is cheaper, such as a small MLP, spends more of its seconds
        # on the estimates than this counts).
        a, b, h = COST[self.estimator]
        compute = sum(a + b * width for width in self.layer_widths or ASSUMED_WIDTHS) * (1.0 + h * self.subsamples)
        return len(self.sets) * (1.0 + compute)

    @override
    def plan_details(self) -> str:
        widths = dict(zip(self._found_layers or [], self.layer_widths or [], strict=True))
        return f" ({self.estimator}; layers and their units: {widths})"

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The layers and their widths before the plan is made: one forward of one training image, on every rank.
        with torch.random.fork_rng(devices=[]), uncompiled(pl_module):  # augmenting data sets draw from it
            self._read_layers(trainer, pl_module)
        super().on_train_start(trainer, pl_module)
        for set_name in self.sets:  # after the broadcast: every rank checks rank 0's points, the same answer
            self._check_probe(set_name, self.points[f"{set_name}_targets"])

    @override
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        model = self.model(pl_module)
        if self._found_layers is None:
            raise RuntimeError(f"{type(self).__name__} reads its layers when training starts (on_train_start).")
        taps = [layer_tap(model, name, type(self).__name__) for name in self._found_layers]
        values: dict[str, float] = {}
        for set_name in self.sets:
            images = self.points[set_name]
            features = gathered_features(trainer, model, taps, images, self.batch_size or 512, pl_module.device)
            if trainer.is_global_zero:  # one process computes, every rank logs its values
                values.update(self._estimates(trainer.global_step, set_name, features, taps))
        if trainer.world_size > 1:
            values = trainer.strategy.broadcast(values, src=0)
        return values

    @override
    def figure_spec(self) -> tuple[str, dict[str, list[float]], str, str]:
        """Every logged value against the step (the base's plot; :meth:`plot` draws the information plane)."""
        curves = {name: values for name, values in self.history.items() if not name.endswith("/overhead")}
        return "information_plane", curves, "bits", "Information plane"

    @override
    def plot(self, trainer: pl.Trainer) -> Path | None:
        """The information plane, ``I(T;Y)`` against ``I(X;T)``: to W&B, else ``<log dir>/information_plane.png``."""
        directory = plot_directory(trainer)  # on every rank: a collective under DDP
        if not trainer.is_global_zero:
            return None
        curves, errors = {}, {}
        for name in self.history:
            if name.endswith("/ixt") and f"{name[:-4]}/ity" in self.history:
                layer = name[len(self.prefix) + 1 : -4]
                curves[layer] = (self.history[name], self.history[f"{name[:-4]}/ity"])
                if f"{name}_se" in self.history and f"{name[:-4]}/ity_se" in self.history:
                    errors[layer] = (self.history[f"{name}_se"], self.history[f"{name[:-4]}/ity_se"])
        figure = information_plane_figure(self.measured_steps, curves, errors, f"Information plane ({self.estimator})")
        step = self.measured_steps[-1] if self.measured_steps else None
        return publish_figure(trainer, figure, "information_plane", directory, step)

    # -- internals ---------------------------------------------------------------------------------
    def _read_layers(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The layers measured and their widths, from one forward of one training image (every rank runs it)."""
        if self.sets[0] in self.points:  # resumed, or given with set_points
            image = self.points[self.sets[0]][:1]
        else:
            image = draw_from_dataset(self.dataset(trainer, "train"), 1, self.generator(5))[0]
        model, owner = self.model(pl_module), type(self).__name__
        self._found_layers, self.layer_widths = measured_layers(model, image, pl_module.device, self.layers, owner)

    def _check_probe(self, set_name: str, targets: torch.Tensor) -> None:
        if self.estimator != "lossy_knn":
            return
        classes, counts = torch.unique(targets, return_counts=True)
        if int(counts.min()) <= self.k:
            small = {int(c): int(n) for c, n in zip(classes, counts, strict=True) if n <= self.k}
            raise ValueError(
                f"{type(self).__name__}(estimator='lossy_knn', k={self.k}) needs more than k probe points in every "
                f"class; the {set_name} probe of {targets.numel()} points has {small} (class: points). Raise "
                "num_points, lower k, or use another estimator."
            )

    def _estimate(
        self, z: torch.Tensor, targets: torch.Tensor, kind: Any, generator: torch.Generator
    ) -> InformationPlanePoint:
        if self.estimator == "adaptive_binning":
            return adaptive_binning(z, targets, self.num_bins, kind)
        if self.estimator == "kde_upper":
            return kde_upper(z, targets, self.sigma)
        if int(torch.unique(targets, return_counts=True)[1].min()) > self.k:
            return lossy_knn(z, targets, self.noise_ratio, self.num_components, self.k, generator)
        # A half-sample with a class of k points or fewer: I(X;T') alone (all points as one class), no I(T';Y).
        ixt = lossy_knn(z, torch.zeros_like(targets), self.noise_ratio, self.num_components, self.k, generator).ixt
        return InformationPlanePoint(ixt, math.nan)

    def _estimates(
        self, step: int, set_name: str, features: dict[str, torch.Tensor], taps: list[FeatureTap]
    ) -> dict[str, float]:
        suffix = "" if set_name == "train" else f"@{set_name}"
        targets = self.points[f"{set_name}_targets"]
        layers: dict[str, tuple[torch.Tensor, Any]] = {}
        for tap in taps:  # the binning's lowest edge: tanh's range, 0 for non-negative layers, else the minimum
            z = features[tap.name].double()
            kind = "tanh" if isinstance(tap.module, nn.Tanh) else "relu" if bool((z >= 0).all()) else None
            layers[f"{self.prefix}/{tap.name}{suffix}"] = (z, kind)
        set_index = SETS.index(set_name)
        noise = torch.Generator().manual_seed(derive_seed(self.seed, step, set_index, 1))
        values: dict[str, float] = {}
        for name, (z, kind) in layers.items():
            values[f"{name}/ixt"], values[f"{name}/ity"] = self._estimate(z, targets, kind, noise)
        if not self.subsamples:
            return values
        if targets.numel() < 4:  # half-samples of one point: no spread to read
            return {**values, **{f"{name}_se": math.nan for name in list(values)}}
        generator = torch.Generator().manual_seed(derive_seed(self.seed, step, set_index))

        def statistic(index: torch.Tensor) -> dict[str, float]:  # every layer on the same half of the probe
            subset: dict[str, float] = {}
            for name, (z, kind) in layers.items():
                subset[f"{name}/ixt"], subset[f"{name}/ity"] = self._estimate(z[index], targets[index], kind, generator)
            return subset

        errors = half_sample_errors(statistic, targets.numel(), self.subsamples, generator)
        return {**values, **{f"{name}_se": errors[name] for name in list(values)}}
