"""Track the local complexity of the network's linear regions around train, held-out and random points."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_regs.callbacks._schedule import ScheduledMonitor, draw_from_dataset
from lightning_regs.functional.local_complexity import local_complexity, orthonormal_directions

__all__ = ["LocalComplexityMonitor"]

_SETS = ("train", "test", "random")


class LocalComplexityMonitor(ScheduledMonitor):
    """Log the local complexity (LC) of the model around fixed point sets on a log-spaced schedule.

    Humayun et al. (ICML 2024): LC rises while the network fits the training data, then falls around
    the data ("region migration") before the network groks. Three fixed point sets are drawn once
    from a private generator at the start of training and kept in the callback state (a resumed run
    measures the same points): ``num_points`` training points, ``num_points`` held-out points (the
    ``heldout_split`` of the DataModule) and ``num_points`` random points uniform in the training
    points' value range. The ``P`` orthonormal directions are drawn once and kept too. At each
    scheduled step the callback logs ``lc/train``, ``lc/test``, ``lc/random`` (neurons summed over
    layers, averaged over points) and, with ``log_per_layer``, ``lc/<set>/<layer>``. With several
    radii the names end in ``@r=<radius>``. Under DDP the points are sharded over the ranks and the
    counts summed, so every rank logs the single-process value. At the end of training (and on
    :meth:`plot`) a plot of LC against the step goes to W&B or to ``<log dir>/lc.png``.

    Args:
        radius: the cross-polytope radius ``r`` (or a list of radii) in the units the model sees.
        num_directions: ``P`` (``2P`` vertices per point); 25 for the MNIST MLP of the paper, 20 for CIFAR.
        num_points: points per set (all of a smaller split).
        sets: which of ``train``, ``test``, ``random`` to measure.
        heldout_split: the DataModule split the held-out points come from (``val`` or ``test``).
        num_measurements: measurements over the run on the log-spaced schedule (the paper: about 50).
        every_n_steps: measure every ``n`` optimizer steps instead of log-spaced.
        layers: names of the modules to count (see :func:`~lightning_regs.functional.local_complexity`);
            default: the inputs of every ReLU-family activation.
        submodule: measure ``pl_module.<submodule>`` (e.g. ``backbone``) instead of the LightningModule.
        log_per_layer: also log each layer's LC.
        batch_size: points per forward (``2P+1`` inputs each); ``None`` picks about 8192 inputs.
        plot: draw the plot at the end of training.
        seed: seed of the points and directions (never the global RNG).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> monitor = LocalComplexityMonitor(radius=0.5, num_directions=25, num_points=256)
        >>> trainer = Trainer(callbacks=[monitor], logger=False, max_steps=10)
    """

    def __init__(
        self,
        radius: float | Sequence[float] = 0.5,
        num_directions: int = 25,
        num_points: int | None = 1024,
        sets: Sequence[str] = _SETS,
        heldout_split: str = "val",
        num_measurements: int = 50,
        every_n_steps: int | None = None,
        layers: Sequence[str] | None = None,
        submodule: str | None = None,
        log_per_layer: bool = True,
        batch_size: int | None = None,
        plot: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(num_measurements, every_n_steps, seed)
        radii = [float(radius)] if isinstance(radius, (int, float)) else [float(r) for r in radius]
        if not radii or any(r <= 0 for r in radii):
            raise ValueError(f"radius must be positive (or a non-empty list of positive radii), got {radius}.")
        unknown = set(sets) - set(_SETS)
        if unknown or not sets:
            raise ValueError(f"sets must be a non-empty subset of {_SETS}, got {list(sets)}.")
        if num_directions < 1:
            raise ValueError(f"num_directions must be positive, got {num_directions}.")
        self.radii = radii
        self.num_directions = num_directions
        self.num_points = num_points
        self.sets = tuple(sets)
        self.heldout_split = heldout_split
        self.layers = list(layers) if layers is not None else None
        self.submodule = submodule
        self.log_per_layer = log_per_layer
        self.batch_size = batch_size
        self.plot_at_end = plot

    @property
    def state_key(self) -> str:
        return self._generate_state_key(radii=self.radii, num_directions=self.num_directions, sets=self.sets)

    def set_points(self, train: torch.Tensor | None = None, test: torch.Tensor | None = None) -> None:
        """Measure these points instead of drawing them from the DataModule (random points span ``train``)."""
        if train is not None:
            self.points["train"] = train.detach().float().cpu()
        if test is not None:
            self.points["test"] = test.detach().float().cpu()
        self._complete_points()

    def _complete_points(self) -> None:
        reference = self.points.get("train", self.points.get("test"))
        if reference is None:
            return
        generator = self.generator(2)
        if "random" in self.sets and "random" not in self.points:
            low, high = float(reference.min()), float(reference.max())
            uniform = torch.rand(reference.shape, generator=generator)
            self.points["random"] = low + (high - low) * uniform
        if "directions" not in self.points:
            self.points["directions"] = orthonormal_directions(reference.shape[1:], self.num_directions, generator)

    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        generator = self.generator(1)
        if "train" not in self.points:
            self.points["train"] = draw_from_dataset(self.dataset(trainer, "train"), self.num_points, generator)[0]
        if "test" in self.sets and "test" not in self.points:
            held_out = self.dataset(trainer, self.heldout_split)
            self.points["test"] = draw_from_dataset(held_out, self.num_points, generator)[0]
        self._complete_points()

    def _model(self, pl_module: pl.LightningModule) -> torch.nn.Module:
        return pl_module.get_submodule(self.submodule) if self.submodule else pl_module

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        model = self._model(pl_module)
        device = pl_module.device
        directions = self.points["directions"].to(device)
        values: dict[str, float] = {}
        for radius in self.radii:
            suffix = "" if len(self.radii) == 1 else f"@r={radius:g}"
            for name in self.sets:
                points = self.points[name]
                shard = self.shard(trainer, points)
                empty = shard.shape[0] == 0
                if empty:  # every rank must still run the forward (FSDP gathers parameters in it)
                    shard = points[:1]
                result = local_complexity(
                    model,
                    shard.to(device),
                    radius,
                    directions=directions,
                    layers=self.layers,
                    batch_size=self.batch_size,
                )
                sums = result.counts.sum(dim=0).to(torch.float64) * (0.0 if empty else 1.0)
                sums = self.reduce_sum(trainer, sums.to(device)).cpu() / points.shape[0]
                values[f"lc/{name}{suffix}"] = float(sums.sum())
                if self.log_per_layer:
                    for layer, value in zip(result.layer_names, sums.tolist(), strict=True):
                        values[f"lc/{name}/{layer}{suffix}"] = value
        return values

    def figure_spec(self) -> tuple[str, dict[str, list[float]], str, str]:
        """LC per point set (not per layer) against the step, saved as ``lc.png``."""
        curves = {name: values for name, values in self.history.items() if name.count("/") == 1}
        return "lc", curves, "local complexity (neurons)", "LC"

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "radii": list(self.radii), "num_directions": self.num_directions}
