"""Track neural collapse (NC1–NC4, CDNV) of the classifier's input features on training and held-out points."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import nn
from typing_extensions import override

from lightning_regs.callbacks._features import FeatureTap, chunked_features, find_classifier, full_tensor
from lightning_regs.callbacks._labelled_points import SETS, LabelledPointsMonitor
from lightning_regs.functional._checks import check_int, check_number
from lightning_regs.functional.bootstrap import derive_seed
from lightning_regs.functional.neural_collapse import NeuralCollapseAccumulator
from lightning_regs.functional.neural_collapse_bootstrap import NeuralCollapseBootstrap
from lightning_regs.functional.outputs import logits_of
from lightning_regs.modes import unwrap_compiled

__all__ = ["NeuralCollapseMonitor"]

REPLICATE_COST = 0.03  # one bootstrap replicate, in eval forwards per point (measured on the digits SmallCNN)


class NeuralCollapseMonitor(LabelledPointsMonitor):
    """Log the neural collapse metrics of the features the classifier sees, on training and held-out points.

    Papyan, Han, Donoho (PNAS 2020): past 100% training accuracy (the terminal phase) the last-layer features
    of each class collapse to their mean (NC1), the means form a simplex equiangular tight frame (NC2), the
    classifier aligns with them (NC3) and classifies as the nearest class centre (NC4). A forward pre-hook on
    the classifier reads its input ``h`` during eval-mode forwards of fixed point sets — ``train`` (clean
    training images: the DataModule's evaluation transform) and ``heldout`` (``heldout_split``) — and each
    set is reduced to float64 class counts, means and within-class scatter (memory ``O(K·d + d²)``; see
    :mod:`lightning_regs.functional.neural_collapse`), with its own class means. Logged per set ``s``:
    ``nc/<s>/nc1`` (Papyan), ``nc1_trace``, ``nc2``, ``nc2_equinorm``, ``nc2_equiangle``, ``nc2_max_angle``,
    ``nc3``, ``nc4``, ``accuracy`` (of the classifier on the set) and ``cdnv``, each with its bootstrap standard
    error ``<name>_se``, and ``nc/overhead``.

    **Errors.** The metrics are not means over points, so each ``_se`` is a Poisson bootstrap: ``bootstrap``
    replicates recompute every metric with each point weighted by a Poisson(1) count drawn from
    ``(seed, step, set, replicate, the point's index in the set)``; the ``_se`` is their standard deviation
    (:class:`~lightning_regs.functional.neural_collapse_bootstrap.NeuralCollapseBootstrap`). The replicates reuse
    the features of the measurement's forwards (no extra forward) and add up across batches and ranks, so the
    errors, like the values, are the single-process ones on every rank. They measure the sampling error of
    the fixed point set (how much the metric would move on another draw of as many points), not the
    variability from run to run.

    NC4 needs a second pass (the nearest class centre is known only after all points): this process's
    features of a set are kept for it when they fit in ``feature_cache_mb`` (1024 points × 512 dims is 2 MB),
    and the forwards run again otherwise; the result is the same. Under DDP and FSDP2 the points are
    sharded over the ranks, the statistics gathered and merged, and the classifier's weights gathered
    (``DTensor.full_tensor()``), so every rank logs the single-process value. The schedule and the shared
    arguments are those of :class:`~lightning_regs.callbacks.ScheduledMonitor` (``every_n_epochs=1``: Papyan's
    every epoch). At the end a plot of NC1–NC3 with their ``_se`` bands goes to W&B or to ``<log dir>/nc.png``.

    Args:
        submodule: the classifier: an ``nn.Linear`` whose input is the feature vector and whose output is the
            logits, or a module whose last ``nn.Linear`` is (e.g. ``"net.fc"``, ``"backbone.head"``). Default:
            the last ``Linear`` of ``backbone.head`` (the library's tasks), else of ``head``, else of the whole
            module; a default whose output is not the module's output is refused with an error asking for it.
        sets: which of ``train``, ``heldout`` to measure.
        feature_cache_mb: per-process memory for the second pass's features; beyond it the forwards run again.
        bootstrap: replicates of the bootstrap errors (``_se``); 0 logs no errors.
        num_points: points per set (``"auto"``: 64–1024 within ``max_overhead``; ``None``: the whole split,
            Papyan's choice for the training set).
        num_measurements, every_n_steps, every_n_epochs, heldout_split, prefix, max_overhead, wall_clock_overhead,
            batch_size, plot, seed: see :class:`~lightning_regs.callbacks.ScheduledMonitor` (``batch_size``: points
            per forward, 512 when ``None``).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> monitor = NeuralCollapseMonitor(num_points=None, every_n_epochs=5)  # the whole training set
        >>> trainer = Trainer(callbacks=[monitor], logger=False, max_epochs=100)
    """

    ylog = True  # the metrics fall by orders of magnitude in the terminal phase

    def __init__(
        self,
        submodule: str | None = None,
        sets: Sequence[str] = SETS,
        num_points: int | Literal["auto"] | None = "auto",
        heldout_split: str = "val",
        every_n_epochs: int | None = None,
        every_n_steps: int | None = None,
        num_measurements: int | None = None,
        feature_cache_mb: float = 256.0,
        bootstrap: int = 20,
        batch_size: int | None = None,
        prefix: str = "nc",
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
        check_number(owner, "feature_cache_mb (0: run the forwards again for NC4)", feature_cache_mb, low=0)
        check_int(owner, "bootstrap", bootstrap, low=0)
        if bootstrap == 1:
            raise ValueError(
                f"{owner}: bootstrap must be 0 (no errors) or at least 2 replicates (a standard deviation), got "
                f"{bootstrap}."
            )
        self.feature_cache_mb = float(feature_cache_mb)
        self.bootstrap = int(bootstrap)

    @override
    def cost_per_point(self) -> float:
        # One eval forward per point and set; each bootstrap replicate adds ~0.03 of one (SmallCNN on digits,
        # 512 points per set: 20 replicates took a measurement from 0.06–0.07 s to 0.09–0.13 s); less for larger models.
        return len(self.sets) * (1.0 + REPLICATE_COST * self.bootstrap)

    def classifier(self, pl_module: pl.LightningModule) -> tuple[str, nn.Linear]:
        """``(name, module)`` of the classifier the monitor hooks (see ``submodule``)."""
        if not self.submodule:
            return find_classifier(unwrap_compiled(pl_module))
        inner, linear = find_classifier(self.model(pl_module))
        return ".".join(part for part in (self.submodule, inner) if part), linear

    @override
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        name, classifier = self.classifier(pl_module)
        weight = full_tensor(classifier.weight).detach()  # FSDP2: every rank gathers the whole classifier
        bias = full_tensor(classifier.bias).detach() if classifier.bias is not None else None
        values: dict[str, float] = {}
        for set_name in self.sets:
            metrics = self._measure_set(
                trainer, pl_module, FeatureTap(name, classifier, "input"), set_name, weight, bias
            )
            values.update({f"{self.prefix}/{set_name}/{key}": value for key, value in metrics.items()})
        return values

    @override
    def figure_spec(self) -> tuple[str, dict[str, list[float]], str, str]:
        """NC1 (Papyan), NC2 and NC3 of each set against the step, saved as ``nc.png`` (log axis, ±1 ``_se`` bands)."""
        keep = ("nc1", "nc2", "nc3")
        curves = {name: values for name, values in self.history.items() if name.rsplit("/", 1)[-1] in keep}
        return "nc", curves, "distance to collapse", "Neural collapse"

    # -- internals ---------------------------------------------------------------------------------
    def _measure_set(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        tap: FeatureTap,
        set_name: str,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> dict[str, float]:
        model, device = unwrap_compiled(pl_module), pl_module.device
        images, targets = self.labelled_points(set_name)
        # Padded: every rank runs the same forwards (FSDP2 gathers parameters in each); padding rows are not counted.
        shard, real = self.even_shard(trainer, images)
        labels = self.even_shard(trainer, targets)[0][:real]
        accumulator = NeuralCollapseAccumulator(weight.shape[0])
        bootstrap = None
        if self.bootstrap:  # keyed by the set and the step: every measurement draws new, reproducible replicates
            key = derive_seed(self.seed, trainer.global_step, SETS.index(set_name))
            bootstrap = NeuralCollapseBootstrap(weight.shape[0], self.bootstrap, seed=key)
        cache: list[tuple[int, torch.Tensor]] | None = []
        for begin, rows in self._features(model, shard, real, tap, device):
            batch_labels, indices = labels[begin : begin + rows.shape[0]], self._indices(trainer, begin, rows)
            accumulator.update(rows, batch_labels)
            if bootstrap is not None:
                bootstrap.update(rows, batch_labels, indices)
            if begin == 0 and shard.shape[0] * rows.shape[1] * rows.element_size() > self.feature_cache_mb * 2**20:
                cache = None  # the same decision on every rank: the shards have the same shape
            if cache is not None:
                cache.append((begin, rows))
        accumulator.sync()
        if bootstrap is not None:
            bootstrap.sync()
        second_pass = cache if cache is not None else self._features(model, shard, real, tap, device)
        for begin, rows in second_pass:
            batch_labels, indices = labels[begin : begin + rows.shape[0]], self._indices(trainer, begin, rows)
            accumulator.update_ncc(rows, batch_labels, weight, bias)
            if bootstrap is not None:
                bootstrap.update_ncc(rows, batch_labels, indices, weight, bias)
        accumulator.sync()
        metrics = accumulator.compute(weight)
        if bootstrap is not None:
            errors = bootstrap.sync().standard_errors(weight)
            metrics.update({f"{name}_se": errors.get(name, math.nan) for name in list(metrics)})
        return metrics

    @staticmethod
    def _indices(trainer: pl.Trainer, begin: int, rows: torch.Tensor) -> torch.Tensor:
        """The indices in the point set of this rank's shard rows ``begin, begin + 1, ...`` (rank r: r, r + W, ...)."""
        return trainer.global_rank + trainer.world_size * torch.arange(begin, begin + rows.shape[0])

    def _features(
        self, model: nn.Module, shard: torch.Tensor, real: int, tap: FeatureTap, device: torch.device
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(begin, features)`` of the shard's chunks, without the padding rows."""
        for begin, output in chunked_features(model, shard, [tap], self.batch_size or 512, device):
            if begin == 0:
                self._check_classifier(tap, output)
            yield begin, tap.take()[: max(0, real - begin)]

    def _check_classifier(self, tap: FeatureTap, output: Any) -> None:
        """A classifier found by the default rule must produce the module's output (the logits)."""
        if self.submodule:
            return
        logits = tap.output
        if tap.calls != 1:
            problem = f"it ran {tap.calls} times in one forward, not once"
        else:
            try:  # the module may return the logits, a dict with them, or an object with .logits
                output = logits_of(output, "the LightningModule")
            except TypeError as error:
                raise TypeError(
                    f"NeuralCollapseMonitor checks that {tap.name!r} (the last nn.Linear it found) gives the module's "
                    f"logits, but {error} Or name the classifier with submodule='...'."
                ) from None
            if logits.shape == output.shape and torch.equal(logits, output):
                return
            problem = "its output is not the LightningModule's output (the logits)"
        raise ValueError(
            f"NeuralCollapseMonitor hooks {tap.name!r} (the last nn.Linear it found), but {problem}: name the "
            "classifier whose output is the logits with submodule='...' (its input is the feature vector measured)."
        )
