"""Track PGD robust accuracy on a fixed held-out set through training: the paper's "delayed robustness"."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_regs.callbacks.scheduled_monitor import ScheduledMonitor
from lightning_regs.functional._checks import check_bool, check_choice, check_int, check_number, check_range_pair
from lightning_regs.functional.adversarial import Norm, pgd_attack, predict, random_perturbation
from lightning_regs.functional.sampling_error import mean_and_standard_error

__all__ = ["AdversarialRobustnessMonitor"]

# The official run attacks with epsilon 50/255 and step 4/255 (normalized CIFAR-10 units): the step is epsilon * 4/50.
OFFICIAL_STEP_FRACTION = 4 / 50


class AdversarialRobustnessMonitor(ScheduledMonitor):
    """Log PGD robust accuracy ``robust/acc`` beside clean accuracy ``robust/clean_acc`` on a fixed held-out set.

    Each comes with its standard error over the points (``robust/acc_se``: ``√(p(1 − p) / (N − 1))``).

    Humayun et al. (ICML 2024) report that networks become robust to PGD examples long after they
    interpolate the training data ("delayed robustness"), at the same time as their local complexity
    falls around the data. ``num_points`` held-out images (and targets) are drawn once (from
    ``heldout_split`` of the DataModule or of the loaders given to ``fit``) and kept in the callback
    state; the random starts are drawn for the whole set from a private generator seeded by
    ``seed`` and the step, so a run under DDP or FSDP2 (points sharded over the ranks, correct counts summed)
    and a resumed run measure exactly what a single uninterrupted run measures. Same schedule as
    :class:`~lightning_regs.callbacks.local_complexity_monitor.LocalComplexityMonitor`; at the end a
    plot goes to W&B or ``<log dir>/robust.png``. Schedule, point count, cost bound and the other shared
    arguments are those of :class:`~lightning_regs.callbacks.ScheduledMonitor`; one point costs about
    ``3·steps + 2`` forwards (a forward and a backward per PGD step, then two predictions).

    Args:
        epsilon: radius of the threat model, in the units the model sees (after normalization).
        step_size: PGD step length; default ``epsilon / 4``.
        steps: PGD steps (10 in the paper's code).
        norm: ``linf`` or ``l2``.
        random_start: start uniformly inside the ball.
        input_range: clamp adversarial inputs (the random start and every step) to ``[low, high]``, the valid data
            range; ``"data"``: to the smallest and largest value over the held-out points (what the official
            ``PGD`` does when it is given no range); ``None``: no clamp.
        preset: ``"library"`` (default) or ``"official"``: the official code's defaults for what is not given,
            a step of ``epsilon * 4/50`` (its 4/255 step at epsilon 50/255) instead of ``epsilon / 4``, and
            ``input_range="data"`` instead of no clamp.
        num_measurements, every_n_steps, every_n_epochs, num_points, heldout_split, submodule, prefix,
            max_overhead, wall_clock_overhead, batch_size, plot, seed: see
            :class:`~lightning_regs.callbacks.ScheduledMonitor`
            (``batch_size``: images attacked at once on each rank, 1024 when ``None``).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> monitor = AdversarialRobustnessMonitor(epsilon=0.2, steps=10, norm="linf")
        >>> trainer = Trainer(callbacks=[monitor], logger=False, max_steps=10)
        >>> official = AdversarialRobustnessMonitor(epsilon=50 / 255, preset="official")
        >>> round(official.step_size * 255, 6), official.input_range
        (4.0, 'data')
    """

    def __init__(
        self,
        epsilon: float = 0.1,
        step_size: float | None = None,
        steps: int = 10,
        norm: Norm = "linf",
        random_start: bool = True,
        num_points: int | Literal["auto"] | None = "auto",
        heldout_split: str = "val",
        input_range: tuple[float, float] | Literal["data"] | None = None,
        preset: Literal["library", "official"] = "library",
        num_measurements: int | None = None,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        submodule: str | None = None,
        batch_size: int | None = None,
        prefix: str = "robust",
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
        check_choice(owner, "norm", norm, ("linf", "l2"))
        check_number(owner, "epsilon", epsilon, low=0, low_open=True)
        if step_size is not None:
            check_number(owner, "step_size (or None: from epsilon)", step_size, low=0, low_open=True)
        check_int(owner, "steps", steps, low=1)
        check_bool(owner, "random_start", random_start)
        if preset not in ("library", "official"):
            raise ValueError(f"{owner}: preset must be 'library' or 'official', got {preset!r}.")
        if isinstance(input_range, str) and input_range != "data":
            raise ValueError(f"{owner}: input_range must be (low, high), 'data' or None; got {input_range!r}.")
        if input_range is not None and input_range != "data":
            check_range_pair(owner, "input_range", input_range)
        official = preset == "official"
        self.preset = preset
        self.epsilon = float(epsilon)
        default_step = self.epsilon * OFFICIAL_STEP_FRACTION if official else self.epsilon / 4
        self.step_size = float(step_size) if step_size is not None else default_step
        self.steps_per_attack = int(steps)
        self.norm = norm
        self.random_start = random_start
        if input_range is None and official:
            input_range = "data"
        self.input_range = input_range if input_range is None or input_range == "data" else tuple(input_range)

    @property
    @override
    def state_key(self) -> str:
        official = {"preset": "official"} if self.preset == "official" else {}  # library keys stay as they were
        return self._generate_state_key(
            epsilon=self.epsilon, norm=self.norm, steps=self.steps_per_attack, **official, **self.state_key_fields()
        )

    def set_points(self, *, heldout: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Attack ``heldout=(images, targets)`` instead of points drawn from the data."""
        if heldout is None or heldout[0] is None or heldout[1] is None:
            raise ValueError("set_points needs heldout=(images, targets): the attack needs the labels.")
        images, targets = heldout
        if targets.dim() != 1 or targets.is_floating_point():
            raise ValueError("The held-out targets must be int64 class ids (N,) to measure accuracy.")
        self.points = {"images": images.detach().float().cpu(), "targets": targets.detach().long().cpu()}

    @override
    def cost_per_point(self) -> float:
        return 3.0 * self.steps_per_attack + 2.0

    @override
    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "images" not in self.points:
            self.set_points(heldout=self.draw_points(trainer, self.heldout_split))

    @override
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        device = pl_module.device
        model = self.model(pl_module)
        batch_size = self.batch_size or 1024
        images, targets = self.points["images"], self.points["targets"]
        input_range = (float(images.min()), float(images.max())) if self.input_range == "data" else self.input_range
        start = None
        if self.random_start:
            generator = self.generator(10 + trainer.global_step)
            start = random_perturbation(images, self.epsilon, self.norm, generator)
        counts = torch.zeros(2, dtype=torch.float64)
        # Padded: every rank attacks the same number of rows in the same chunks, so FSDP2's parameter gathers (a
        # collective in every forward and backward) line up; the padding rows are not counted.
        (shard_images, real), (shard_targets, _) = self.even_shard(trainer, images), self.even_shard(trainer, targets)
        shard_start = self.even_shard(trainer, start)[0] if start is not None else None
        for begin in range(0, shard_images.shape[0], batch_size):
            x = shard_images[begin : begin + batch_size].to(device)
            y = shard_targets[begin : begin + batch_size].to(device)
            delta = shard_start[begin : begin + batch_size] if shard_start is not None else None
            counted = (torch.arange(begin, begin + x.shape[0]) < real).to(device)
            adversarial = pgd_attack(
                model,
                x,
                y,
                self.epsilon,
                self.step_size,
                self.steps_per_attack,
                self.norm,
                random_start=False,
                input_range=input_range,
                start=delta,
            )
            counts[0] += float((predict(model, adversarial).eq(y) & counted).sum())
            counts[1] += float((predict(model, x).eq(y) & counted).sum())
        counts = self.reduce_sum(trainer, counts.to(device)).cpu()
        # A point scores 0 or 1, so its square is itself: the sums of squares are the counts.
        accuracy, error = mean_and_standard_error(counts, counts, images.shape[0])
        return {
            f"{self.prefix}/acc": float(accuracy[0]),
            f"{self.prefix}/acc_se": float(error[0]),
            f"{self.prefix}/clean_acc": float(accuracy[1]),
            f"{self.prefix}/clean_acc_se": float(error[1]),
        }

    @override
    def figure_spec(self) -> tuple[str, dict[str, list[float]], str, str]:
        """Robust and clean accuracy against the step, saved as ``robust.png``."""
        return "robust", self.history, "accuracy", f"PGD-{self.norm}"

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "epsilon": self.epsilon, "norm": self.norm}
