"""Track the local complexity of the network's linear regions around train, held-out and random points."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_regs.callbacks.scheduled_monitor import ScheduledMonitor, check_layer_names, check_sets
from lightning_regs.functional._checks import check_bool, check_int, check_number
from lightning_regs.functional.local_complexity import local_complexity, orthonormal_directions
from lightning_regs.functional.sampling_error import mean_and_standard_error

__all__ = ["LocalComplexityMonitor"]

_SETS = ("train", "heldout", "random")
MAX_AUTO_DIRECTIONS, MIN_AUTO_DIRECTIONS = 25, 4  # the paper's MNIST P; below 4 the count says little


class LocalComplexityMonitor(ScheduledMonitor):
    """Log the local complexity (LC) of the model around fixed point sets on a log-spaced schedule.

    Humayun et al. (ICML 2024): LC rises while the network fits the training data, then falls around
    the data ("region migration") before the network groks. Three fixed point sets are drawn once
    from a private generator at the start of training and kept in the callback state (a resumed run
    measures the same points): ``num_points`` training points, ``num_points`` held-out points (the
    ``heldout_split`` of the DataModule, or of the loaders given to ``fit``) and ``num_points`` random
    points uniform in the training points' value range. The ``P`` orthonormal directions are drawn
    once and kept too. At each scheduled step the callback logs ``lc/train``, ``lc/heldout``,
    ``lc/random`` (neurons summed over layers, averaged over points) and, with ``log_per_layer``,
    ``lc/<set>/<layer>``, each with its standard error over the points as ``<name>_se``. With several
    radii the names end in ``@r=<radius>``. Under DDP and FSDP2 the points
    are sharded over the ranks and the counts summed, so every rank logs the single-process value. At the
    end of training (and on :meth:`plot`) a plot of LC against the step goes to W&B or to
    ``<log dir>/lc.png``. Schedule, point count, cost bound and the other shared arguments are those
    of :class:`~lightning_regs.callbacks.ScheduledMonitor`; one point costs ``2P + 1`` forwards per
    set and radius. At the defaults the monitor plans itself within 10% of the run's forward passes
    (counted, not timed): at least 8 measurements, with ``P`` (``num_directions="auto"``) lowered from 25
    towards 4 before the points go below 64 (a 1,000-step run at batch 64: ``P = 5``, 64 points, 9
    measurements). The ``P`` chosen is printed with the plan and kept in the checkpoint; LC grows with
    ``P``, so set it to compare runs of different lengths.

    Args:
        radius: the cross-polytope radius ``r`` (or a list of radii) in the units the model sees.
        num_directions: ``P`` (``2P`` vertices per point); 25 for the MNIST MLP of the paper, 20 for CIFAR.
            ``"auto"``: 25, or fewer (down to 4) when the budget cannot afford 8 measurements of 64 points.
        sets: which of ``train``, ``heldout``, ``random`` to measure.
        layers: names of the modules to count (see :func:`~lightning_regs.functional.local_complexity`);
            default: the inputs of every ReLU-family activation.
        log_per_layer: also log each layer's LC (one metric per layer and set).
        preset: ``"library"`` (the default) counts at the inputs of the ReLU-family activations (the official
            ResNet script's layers) with the centre among the vertices; ``"official"`` is the official ResNet
            script's count: the same layers, the ``2P`` vertices only (the centre can only add neurons, so
            ``"library"`` is never below it); ``"official_mlp"`` counts at the output of every ``nn.Linear``,
            the logits included, without the centre, as the official MLP script does (on random 16-32-32-10
            MLPs ``"library"`` is 3-12% below it). ``layers`` overrides the layer choice of any preset.
        num_measurements, every_n_steps, every_n_epochs, num_points, heldout_split, submodule, prefix,
            max_overhead, wall_clock_overhead, batch_size, plot, seed: see
            :class:`~lightning_regs.callbacks.ScheduledMonitor`
            (``batch_size``: points per forward, ``2P+1`` inputs each; ``None`` picks about 8192 inputs).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> monitor = LocalComplexityMonitor(radius=0.5, num_directions=25, num_points=256)
        >>> trainer = Trainer(callbacks=[monitor], logger=False, max_steps=10)
    """

    def __init__(
        self,
        radius: float | Sequence[float] = 0.5,
        num_directions: int | Literal["auto"] = "auto",
        num_points: int | Literal["auto"] | None = "auto",
        sets: Sequence[str] = _SETS,
        heldout_split: str = "val",
        num_measurements: int | None = None,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        layers: Sequence[str] | None = None,
        submodule: str | None = None,
        log_per_layer: bool = False,
        preset: Literal["library", "official", "official_mlp"] = "library",
        batch_size: int | None = None,
        prefix: str = "lc",
        max_overhead: float | None = 0.1,
        plot: bool = True,
        seed: int = 0,
        wall_clock_overhead: float | None = None,
    ) -> None:
        super().__init__(
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
        if isinstance(radius, (str, bytes)) or not isinstance(radius, (Sequence, numbers.Real)):
            raise TypeError(f"{owner}: radius must be a positive number or a list of them, got {radius!r}.")
        given = list(radius) if isinstance(radius, Sequence) else [radius]
        if not given:
            raise ValueError(f"{owner}: radius must be a positive number or a non-empty list of them, got {radius!r}.")
        radii = [check_number(owner, "radius", r, low=0, low_open=True) for r in given]
        repeated = sorted({r for r in radii if radii.count(r) > 1})
        if repeated:
            raise ValueError(f"{owner}: radius lists {repeated} more than once, got {radius!r}; give distinct radii.")
        if isinstance(sets, str):
            sets = [sets]
        sets = check_sets(owner, sets, _SETS)
        if num_directions != "auto":
            check_int(owner, "num_directions (or 'auto')", num_directions, low=1)
        layers = check_layer_names(owner, layers) if layers is not None else None
        check_bool(owner, "log_per_layer", log_per_layer)
        self.radii = radii
        self.num_directions = num_directions
        # P in use: the user's, or resolved from the budget when the plan is made (restored on resume).
        self.directions_count: int | None = None if num_directions == "auto" else num_directions
        self.sets = sets
        if preset not in ("library", "official", "official_mlp"):
            raise ValueError(f"{owner}: preset must be 'library', 'official' or 'official_mlp', got {preset!r}.")
        self.layers = list(layers) if layers is not None else None
        self.log_per_layer = log_per_layer
        self.preset = preset

    @property
    @override
    def state_key(self) -> str:
        # The key spells the held-out set "test" and keys "auto" as 25: the key format is fixed.
        sets = tuple("test" if name == "heldout" else name for name in self.sets)
        directions = MAX_AUTO_DIRECTIONS if self.num_directions == "auto" else self.num_directions
        return self._generate_state_key(
            radii=self.radii, num_directions=directions, sets=sets, **self.state_key_fields()
        )

    def set_points(self, train: torch.Tensor | None = None, heldout: torch.Tensor | None = None) -> None:
        """Measure these points instead of drawing them from the data (random points span ``train``)."""
        if train is not None:
            self.points["train"] = train.detach().float().cpu()
        if heldout is not None:
            self.points["heldout"] = heldout.detach().float().cpu()
        self._complete_points()

    @override
    def cost_per_point(self) -> float:
        directions = self.directions_count or MAX_AUTO_DIRECTIONS
        return float((2 * directions + 1) * len(self.radii) * len(self.sets))

    @override
    def fit_cost_to(self, forwards_per_point: float) -> None:
        """``num_directions="auto"``: the largest ``P`` in [4, 25] whose ``2P + 1`` forwards fit the allowance."""
        if self.directions_count is not None:
            return
        per_set = forwards_per_point / (len(self.radii) * len(self.sets))
        self.directions_count = int(min(max((per_set - 1) // 2, MIN_AUTO_DIRECTIONS), MAX_AUTO_DIRECTIONS))

    @override
    def plan_details(self) -> str:
        return f" (P = {self.directions_count} directions)"

    def _complete_points(self) -> None:
        reference = self.points.get("train", self.points.get("heldout"))
        if reference is None:
            return
        generator = self.generator(2)
        if "random" in self.sets and "random" not in self.points:
            low, high = float(reference.min()), float(reference.max())
            uniform = torch.rand(reference.shape, generator=generator)
            self.points["random"] = low + (high - low) * uniform
        if "directions" not in self.points and self.directions_count is not None:  # "auto": drawn once resolved
            self.points["directions"] = orthonormal_directions(reference.shape[1:], self.directions_count, generator)

    @override
    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.directions_count is None:  # no budget to fit (max_overhead=None): the paper's P
            self.directions_count = MAX_AUTO_DIRECTIONS
        if "train" not in self.points:
            self.points["train"] = self.draw_points(trainer, "train")[0]
        if "heldout" in self.sets and "heldout" not in self.points:
            self.points["heldout"] = self.draw_points(trainer, self.heldout_split, offset=3)[0]
        self._complete_points()

    @override
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        model = self.model(pl_module)
        device = pl_module.device
        directions = self.points["directions"].to(device)
        values: dict[str, float] = {}
        for radius in self.radii:
            suffix = "" if len(self.radii) == 1 else f"@r={radius:g}"
            for name in self.sets:
                points = self.points[name]
                # Padded: every rank runs the same forwards in the same chunks (FSDP2 gathers parameters in each).
                shard, real = self.even_shard(trainer, points)
                result = local_complexity(
                    model,
                    shard.to(device),
                    radius,
                    directions=directions,
                    layers=self._layers(model),
                    batch_size=self.batch_size,
                    include_center=self.preset == "library",
                )
                # Per point: each layer's count and their total; sums and sums of squares add up over ranks.
                counts = result.counts[:real].to(torch.float64)
                counts = torch.cat([counts, counts.sum(dim=1, keepdim=True)], dim=1)
                sums = torch.stack([counts.sum(dim=0), counts.pow(2).sum(dim=0)])
                sums = self.reduce_sum(trainer, sums.to(device)).cpu()
                means, errors = mean_and_standard_error(sums[0], sums[1], points.shape[0])
                values[f"{self.prefix}/{name}{suffix}"] = float(means[-1])
                values[f"{self.prefix}/{name}{suffix}_se"] = float(errors[-1])
                if self.log_per_layer:
                    for index, layer in enumerate(result.layer_names):
                        values[f"{self.prefix}/{name}/{layer}{suffix}"] = float(means[index])
                        values[f"{self.prefix}/{name}/{layer}{suffix}_se"] = float(errors[index])
        return values

    def _layers(self, model: torch.nn.Module) -> list[str] | None:
        if self.layers is not None or self.preset != "official_mlp":
            return self.layers
        linear = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
        if not linear:
            raise ValueError(
                "LocalComplexityMonitor(preset='official_mlp') counts nn.Linear outputs; the model has none."
            )
        return linear

    @override
    def figure_spec(self) -> tuple[str, dict[str, list[float]], str, str]:
        """LC per point set (not per layer) against the step, saved as ``lc.png``."""
        curves = {name: values for name, values in self.history.items() if name.count("/") == 1}
        return "lc", curves, "local complexity (neurons)", "LC"

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "radii": list(self.radii), "num_directions": self.directions_count}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("num_directions") is not None:
            self.directions_count = int(state_dict["num_directions"])
