"""Track the diffusion spectral entropy of a layer's outputs, and their mutual information with labels and inputs.

The monitor and its arguments: :class:`DiffusionSpectralEntropyMonitor`; the equations:
:mod:`lightning_regs.functional.diffusion_entropy`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_regs.callbacks._features import gathered_features
from lightning_regs.callbacks._labelled_points import SETS, LabelledPointsMonitor
from lightning_regs.callbacks._layer_taps import PENULTIMATE, layer_tap
from lightning_regs.callbacks.scheduled_monitor import check_layer_names
from lightning_regs.functional._checks import check_bool, check_int, check_number
from lightning_regs.functional.bootstrap import derive_seed, half_sample_errors
from lightning_regs.functional.diffusion_entropy import (
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
    discretize,
    kernel_width,
)

__all__ = ["DiffusionSpectralEntropyMonitor"]

HALF_SAMPLE_COST = 0.35  # one half-sample: σ, DSE and the DSMIs at N/2, as a share of the full probe's (N = 512)


class DiffusionSpectralEntropyMonitor(LabelledPointsMonitor):
    """Log DSE of a layer's outputs on a fixed probe set, and DSMI with the labels and with the inputs.

    Liao, Liu et al. (ICML workshop 2023): the diffusion spectral entropy (DSE) of a network's representations
    rises during training, and their diffusion spectral mutual information with the class labels (DSMI(Z; Y))
    rises while the network generalizes and stays flat while it fits random labels. At each scheduled point the
    probe images go through the model in eval mode; each layer's output ``Z`` (flattened per image; default the
    ``penultimate`` features, i.e. the classifier's input) is gathered from all ranks and measured once, in float64
    on the CPU, with :func:`~lightning_regs.functional.diffusion_entropy.diffusion_spectral_entropy` and
    :func:`~lightning_regs.functional.diffusion_entropy.diffusion_spectral_mutual_information` (``σ`` once per
    layer and measurement, shared by DSE and both DSMIs). Logged: ``dse/<layer>``, ``dsmi_y/<layer>`` (with the
    probe's class ids) and ``dsmi_x/<layer>`` (with the probe inputs, spectrally clustered once into
    ``num_clusters`` groups at the start); for the held-out probe the names end in ``@heldout``. Also
    ``dse/overhead``. DSE of ``N`` points is at most ``log2 N``: compare values at the same ``num_points``.

    **Errors.** Each value comes with ``<name>_se``, its standard error by half-sampling: ``subsamples`` subsets
    of ``⌊N/2⌋`` distinct probe points (drawn without replacement, the same subsets for every layer), on which
    σ, DSE and both DSMIs are computed again; the ``_se`` is their standard deviation × ``√(m/(N−m))``, the
    delete-``d`` jackknife (:func:`~lightning_regs.functional.bootstrap.half_sample_errors`). Subsets, not a
    bootstrap: a point drawn twice is a pair at distance 0, which pulls the median σ down and changes the kernel's
    degrees. The draws come from a private generator keyed by ``(seed, step, probe set)``, on rank 0 with the
    values. Each subset costs about 0.35 of the full computation (smaller eigenproblems, as many DSMI classes):
    the default 8 took a 512-point measurement to 2.1–2.8× its time without errors (counted in the cost).

    Args:
        layers: names of modules (in ``pl_module``, or in ``submodule`` when given) whose outputs are measured, or
            ``"penultimate"`` (the input of the classifier, found as
            :class:`~lightning_regs.callbacks.NeuralCollapseMonitor` finds it). Default: ``"penultimate"``.
        sigma: the kernel width; ``None``: the median pairwise distance (scale-free; the paper's 10 is not).
        t: the diffusion time (1 in the paper).
        labels: log DSMI with the class ids.
        inputs: log DSMI with the (clustered) inputs.
        repeats: random subsets averaged in DSMI (5 in the paper).
        num_clusters: clusters of the inputs for ``dsmi_x`` (10 in the paper).
        subsamples: half-samples of the ``_se`` errors; 0 logs no errors.
        sets: probe sets, of ``train`` (clean training images) and ``heldout``; default ``train``.
        num_measurements, every_n_steps, every_n_epochs, num_points, heldout_split, submodule, prefix,
            max_overhead, wall_clock_overhead, batch_size, plot, seed: see
            :class:`~lightning_regs.callbacks.ScheduledMonitor`
            (``num_points``: the probe size ``N``, the eigenproblem is ``N × N``; ``batch_size``: points per
            forward, 512 when ``None``).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> monitor = DiffusionSpectralEntropyMonitor(layers=["penultimate", "backbone.layers.block2"], num_points=500)
        >>> trainer = Trainer(callbacks=[monitor], logger=False, max_epochs=20)
    """

    def __init__(
        self,
        layers: str | Sequence[str] | None = None,
        sigma: float | None = None,
        t: int = 1,
        labels: bool = True,
        inputs: bool = True,
        repeats: int = 5,
        num_clusters: int = 10,
        subsamples: int = 8,
        sets: Sequence[str] = ("train",),
        num_points: int | Literal["auto"] | None = "auto",
        heldout_split: str = "val",
        every_n_epochs: int | None = None,
        every_n_steps: int | None = None,
        num_measurements: int | None = None,
        submodule: str | None = None,
        batch_size: int | None = None,
        prefix: str = "dse",
        max_overhead: float | None = 0.05,
        plot: bool = True,
        seed: int = 0,
        wall_clock_overhead: float | None = None,
    ) -> None:
        super().__init__(
            sets=sets,
            num_measurements=num_measurements,
            every_n_steps=every_n_steps,
            every_n_epochs=every_n_epochs,
            num_points=num_points,
            heldout_split=heldout_split,
            submodule=submodule,
            prefix=prefix,
            max_overhead=max_overhead,
            batch_size=batch_size,
            plot=plot,
            seed=seed,
            wall_clock_overhead=wall_clock_overhead,
        )
        owner = type(self).__name__
        names = [PENULTIMATE] if layers is None else check_layer_names(owner, layers)
        if sigma is not None:
            check_number(owner, "sigma (or None: the median pairwise distance)", sigma, low=0, low_open=True)
        check_int(owner, "t", t, low=1)
        check_int(owner, "repeats", repeats, low=1)
        check_int(owner, "num_clusters", num_clusters, low=2)
        check_int(owner, "subsamples", subsamples, low=0)
        if subsamples == 1:
            raise ValueError(
                f"{owner}: subsamples must be 0 (no errors) or at least 2 (a standard deviation), got {subsamples}."
            )
        check_bool(owner, "labels", labels)
        check_bool(owner, "inputs", inputs)
        self.layers = names
        self.sigma = None if sigma is None else float(sigma)
        self.t = int(t)
        self.labels = labels
        self.inputs = inputs
        self.repeats = int(repeats)
        self.num_clusters = int(num_clusters)
        self.subsamples = int(subsamples)

    @override
    def state_key_fields(self) -> dict[str, Any]:
        return {**super().state_key_fields(), "layers": self.layers, "sets": self.sets}

    @override
    def cost_per_point(self) -> float:
        # One eval forward per point and set, and about as much again for the eigenproblems at N <= 1024 on a CPU;
        # each half-sample adds ~0.35 of that (8 of them took a 512-point measurement from 0.08–0.12 s to 0.21–0.30 s).
        return len(self.sets) * (1.0 + 1.0 * (1.0 + HALF_SAMPLE_COST * self.subsamples))

    @override
    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().prepare(trainer, pl_module)
        for name in self.sets:
            if self.inputs and f"{name}_clusters" not in self.points:  # clustered once: the inputs do not change
                # Non-finite points are never measured (logged as NaN): their clusters only need to exist.
                points = torch.nan_to_num(self.points[name], nan=0.0, posinf=0.0, neginf=0.0)
                if points.shape[0] <= self.num_clusters:  # each point its own cluster: dsmi_x would read log N
                    raise ValueError(
                        f"{type(self).__name__}: the {name} probe has {points.shape[0]} points, not more than "
                        f"num_clusters={self.num_clusters}, so clustering the inputs for dsmi_x would put each point "
                        "in a cluster of its own. Raise num_points, lower num_clusters, or pass inputs=False."
                    )
                self.points[f"{name}_clusters"] = discretize(points, num_clusters=self.num_clusters, seed=self.seed)

    @override
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        model = self.model(pl_module)
        taps = [layer_tap(model, layer, type(self).__name__) for layer in self.layers]
        values: dict[str, float] = {}
        for set_name in self.sets:
            probe = self.points[set_name]  # every layer's features, in the probe's order, on every rank
            features = gathered_features(trainer, model, taps, probe, self.batch_size or 512, pl_module.device)
            if trainer.is_global_zero:  # one process computes, every rank logs its values
                values.update(self._entropies(trainer, set_name, features))
        if trainer.world_size > 1:
            values = trainer.strategy.broadcast(values, src=0)
        return values

    @override
    def figure_spec(self) -> tuple[str, dict[str, list[float]], str, str]:
        """DSE and DSMI of every layer against the step, saved as ``dse.png``."""
        curves = {name: values for name, values in self.history.items() if not name.endswith("/overhead")}
        return "dse", curves, "bits", "Diffusion spectral entropy"

    # -- internals ---------------------------------------------------------------------------------
    def _entropies(self, trainer: pl.Trainer, set_name: str, features: dict[str, torch.Tensor]) -> dict[str, float]:
        suffix = "" if set_name == "train" else f"@{set_name}"
        targets = self.points[f"{set_name}_targets"]
        clusters = self.points[f"{set_name}_clusters"] if self.inputs else None
        step = trainer.global_step
        points = {f"{layer}{suffix}": z.double() for layer, z in features.items()}
        values: dict[str, float] = {}
        for name, z in points.items():
            values.update(
                self._values(name, z, targets, clusters, self.generator(1000 + step), self.generator(2000 + step))
            )
        if not self.subsamples:
            return values
        size = targets.shape[0]
        if size < 4:  # half-samples of one point: no spread to read
            return {**values, **{f"{name}_se": math.nan for name in list(values)}}
        generator = torch.Generator().manual_seed(derive_seed(self.seed, step, SETS.index(set_name)))

        def statistic(index: torch.Tensor) -> dict[str, float]:  # every layer on the same half of the probe
            part = clusters[index] if clusters is not None else None
            subset: dict[str, float] = {}
            for name, z in points.items():
                subset.update(self._values(name, z[index], targets[index], part, generator, generator))
            return subset

        errors = half_sample_errors(statistic, size, self.subsamples, generator)
        return {**values, **{f"{name}_se": errors[name] for name in list(values)}}

    def _values(
        self,
        name: str,
        z: torch.Tensor,
        targets: torch.Tensor,
        clusters: torch.Tensor | None,
        label_generator: torch.Generator,
        input_generator: torch.Generator,
    ) -> dict[str, float]:
        """DSE and the DSMIs of one layer's points ``z`` (float64), with ``σ`` computed once from them."""
        sigma = kernel_width(z, self.sigma)
        values = {f"{self.prefix}/{name}": diffusion_spectral_entropy(z, sigma, self.t, max_points=None)}
        shared = {"sigma": sigma, "t": self.t, "repeats": self.repeats, "max_points": None}
        if self.labels:
            values[f"dsmi_y/{name}"] = diffusion_spectral_mutual_information(
                z, targets, generator=label_generator, **shared
            )
        if clusters is not None:
            values[f"dsmi_x/{name}"] = diffusion_spectral_mutual_information(
                z, clusters, generator=input_generator, **shared
            )
        return values
