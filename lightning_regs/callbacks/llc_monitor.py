"""Track the local learning coefficient (LLC) of the network over training, by SGLD localised at its weights."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_regs.callbacks._llc_losses import behavioural_loss, task_loss
from lightning_regs.callbacks.monitor_points import draw_from_dataset
from lightning_regs.callbacks.scheduled_monitor import ScheduledMonitor
from lightning_regs.functional._checks import check_bool, check_int, check_number
from lightning_regs.functional.llc import default_n_beta, estimate_llc
from lightning_regs.modes import eval_mode

__all__ = ["LocalLearningCoefficientMonitor"]

MIN_AUTO_DRAWS, MAX_AUTO_DRAWS = 10, 100  # devinterp's default is 100 draws a chain
NBeta = float | Literal["dataset", "batch"]


class LocalLearningCoefficientMonitor(ScheduledMonitor):
    """Log the local learning coefficient λ̂ (Lau et al. 2023) of the model at its current weights ``w*``.

    At each scheduled step the monitor runs ``num_chains`` chains of SGLD localised at ``w*`` on clones of the
    measured parameters (:func:`~lightning_regs.functional.estimate_llc`; the model is never changed, frozen
    parameters and buffers stay at ``w*``, the model is in eval mode), each step on a minibatch of
    ``num_points`` points drawn from a fixed pool of ``pool_size`` training points, and logs
    ``llc/mean`` (λ̂) with ``llc/mean_se`` (the standard deviation over chains ÷ √C), ``llc/std``,
    ``llc/n_beta``, ``llc/init_loss`` (``L(w*)`` on the draws' minibatches), ``llc/trace_rise`` (the chains' mean
    rise of the loss over the second half of their draws, in residual standard deviations: near 0 when they
    settled, above 4 flags a chain; NaN with fewer than 20 draws) and ``llc/flagged`` (chains whose loss became
    non-finite, was still rising, or whose λ̂ is impossibly far above ``d/2``; a warning names them and why). A
    diverged chain makes ``llc/mean`` NaN, never a number. The plot (``llc.png``) draws λ̂ against the step with
    its error band. Minibatches and noise come from a private generator seeded by ``seed`` and the
    step: the training's RNG is untouched, and a resumed run measures what an uninterrupted one does.

    **nβ** moves λ̂ a lot and is logged: ``"dataset"`` (default) is Lau et al.'s ``n / log n`` with ``n`` the
    training-set size; ``"batch"`` is devinterp's ``B / log B`` with ``B`` the minibatch (``num_points``); or a
    number. **The loss** is the task's own (``pl_module.compute_loss(logits, batch)``, as the library's tasks
    define it), else cross-entropy on the logits, or ``loss(logits, targets)`` when given. ``behavioural=True``
    samples the output distance to the current network instead, ``mean_b ‖f_w(x_b) − f_w*(x_b)‖²`` (the
    behavioural LLC; ``L(w*) = 0``).

    **Cost.** One chain step is a forward and a backward of the minibatch (3 forwards a point), plus a forward
    at ``w*`` per draw. Within the budget the plan keeps 8 measurements first, then lowers ``num_draws="auto"``
    from 100 towards 10, then the minibatch from 64 towards 16: a 1,000-step run of batch 64 at
    ``max_overhead=0.1`` gets 4 chains × 10 draws of 18 points, a rough λ̂ whose chain spread ``llc/mean_se``
    shows. Give ``max_overhead`` or the sizes for a finer one. **DDP**: rank 0 samples and broadcasts the
    values, so every rank logs the same; sharded parameters (FSDP2) are refused.

    Args:
        num_chains: independent chains ``C`` (at least 2, for the error).
        num_draws: draws per chain after the burn-in; ``"auto"``: 100, or fewer (down to 10) within the budget.
        num_burnin: steps per chain before the first draw.
        step_size: the SGLD step ``ε``.
        localization: ``γ``, the pull back to ``w*`` (devinterp's default 0 lets chains drift along flat directions).
        n_beta: ``"dataset"``, ``"batch"`` or a positive number (see above).
        loss: ``loss(logits, targets) -> scalar`` instead of the task's loss.
        behavioural: sample the output distance to the current network instead of the loss.
        pool_size: training points the minibatches are drawn from (drawn once, kept in the checkpoint);
            ``None``: the whole training split.
        num_points: the minibatch of each chain step; ``"auto"``: sized to the budget (16–1024).
        num_measurements, every_n_steps, every_n_epochs, submodule, prefix, max_overhead, wall_clock_overhead,
            plot, seed: see :class:`~lightning_regs.callbacks.ScheduledMonitor`.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> monitor = LocalLearningCoefficientMonitor(num_chains=4, step_size=1e-4, n_beta="dataset")
        >>> trainer = Trainer(callbacks=[monitor], logger=False, max_steps=10)
    """

    def __init__(
        self,
        num_chains: int = 4,
        num_draws: int | Literal["auto"] = "auto",
        num_burnin: int = 0,
        step_size: float = 1e-4,
        localization: float = 100.0,
        n_beta: NBeta = "dataset",
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        behavioural: bool = False,
        pool_size: int | None = 1024,
        num_points: int | Literal["auto"] = "auto",
        num_measurements: int | None = None,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        submodule: str | None = None,
        prefix: str = "llc",
        max_overhead: float | None = 0.1,
        plot: bool = True,
        seed: int = 0,
        wall_clock_overhead: float | None = None,
    ) -> None:
        if num_points is None:
            raise ValueError("num_points is the SGLD minibatch: give a positive int or 'auto', not None.")
        super().__init__(
            num_measurements=num_measurements,
            every_n_steps=every_n_steps,
            every_n_epochs=every_n_epochs,
            num_points=num_points,
            submodule=submodule,
            prefix=prefix,
            max_overhead=max_overhead,
            plot=plot,
            seed=seed,
            wall_clock_overhead=wall_clock_overhead,
        )
        owner = type(self).__name__
        check_int(owner, "num_chains (their spread is the error)", num_chains, low=2)
        if num_draws != "auto":
            check_int(owner, "num_draws (or 'auto')", num_draws, low=1)
        check_int(owner, "num_burnin", num_burnin, low=0)
        check_number(owner, "step_size", step_size, low=0, low_open=True)
        check_number(owner, "localization", localization, low=0)
        if n_beta not in ("dataset", "batch") and (
            isinstance(n_beta, (bool, str)) or not isinstance(n_beta, numbers.Real) or not math.isfinite(n_beta)
            or n_beta <= 0
        ):  # fmt: skip
            raise ValueError(
                f"{owner}: n_beta must be 'dataset' (n/log n), 'batch' (B/log B) or a positive number, got {n_beta!r}."
            )
        if loss is not None and not callable(loss):
            raise TypeError(f"{owner}: loss must be a callable loss(output, target) or None, got {loss!r}.")
        check_bool(owner, "behavioural", behavioural)
        if loss is not None and behavioural:
            raise ValueError("Give loss or behavioural=True, not both: the behavioural LLC samples output distances.")
        if pool_size is not None:
            check_int(owner, "pool_size (or None: the whole split)", pool_size, low=2)
        self.num_chains = num_chains
        self.num_draws = num_draws
        self.draws_count: int | None = None if num_draws == "auto" else num_draws
        self.num_burnin = num_burnin
        self.step_size = float(step_size)
        self.localization = float(localization)
        self.n_beta = n_beta
        self.loss = loss
        self.behavioural = behavioural
        self.pool_size = pool_size
        self.train_size: int | None = None

    # -- plan ----------------------------------------------------------------------------------------
    @override
    def cost_per_point(self) -> float:
        draws = self.draws_count or MAX_AUTO_DRAWS
        steps = self.num_burnin + draws
        reference = steps if self.behavioural else draws  # forwards at w*: outputs (behavioural) or losses
        return float(3 * self.num_chains * steps + reference)

    @override
    def fit_cost_to(self, forwards_per_point: float) -> None:
        """``num_draws="auto"``: the most draws in [10, 100] whose chain steps fit the allowance."""
        if self.draws_count is not None:
            return
        per_draw = 3 * self.num_chains + 1 + (1 if self.behavioural else 0)
        affordable = (forwards_per_point - 3 * self.num_chains * self.num_burnin) // per_draw
        self.draws_count = int(min(max(affordable, MIN_AUTO_DRAWS), MAX_AUTO_DRAWS))

    @override
    def plan_details(self) -> str:
        return f" ({self.num_chains} chains × {self.draws_count} draws, the points are each step's minibatch)"

    # -- points --------------------------------------------------------------------------------------
    @override
    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.draws_count is None:  # no budget to fit (max_overhead=None)
            self.draws_count = MAX_AUTO_DRAWS
        if "pool" in self.points:
            return
        dataset = self.dataset(trainer, "train")
        self.train_size = len(dataset)  # type: ignore[arg-type]
        if self.train_size < 2:
            raise ValueError(f"{type(self).__name__} needs a training split of at least 2 samples (nβ = n/log n).")
        images, targets = draw_from_dataset(dataset, self.pool_size, self.generator(1))
        self.points["pool"], self.points["pool_targets"] = images, targets

    def resolved_n_beta(self) -> float:
        """The ``nβ`` in use (see the class docstring)."""
        if self.n_beta == "dataset":
            if self.train_size is None:
                raise RuntimeError("nβ = n/log n needs the training-set size: it is read when training starts.")
            return default_n_beta(self.train_size)
        if self.n_beta == "batch":
            return default_n_beta(int(self.points_per_set or 2))
        return float(self.n_beta)

    # -- measurement ---------------------------------------------------------------------------------
    @override
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        model = self.model(pl_module)
        if any(type(p).__name__ == "DTensor" for p in model.parameters()):
            raise ValueError(
                f"{type(self).__name__} samples clones of the whole parameters, and these are sharded (FSDP2 "
                "DTensors): measure under DDP or one process."
            )
        values: dict[str, float] | None = None
        if trainer.is_global_zero:  # one sampler; every rank logs its values
            values = self._estimate(trainer, pl_module, model)
        if trainer.world_size > 1:
            values = trainer.strategy.broadcast(values, src=0)
        assert values is not None
        return values

    def _estimate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, model: torch.nn.Module) -> dict[str, float]:
        step = trainer.global_step
        device = pl_module.device
        batches = self._minibatches(step, device)
        with eval_mode(model):
            if self.behavioural:
                loss_fn, batches = behavioural_loss(model, batches)
            else:
                loss_fn = task_loss(model, pl_module, self.loss)
            noise = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + 2 * step + 1)
            estimate = estimate_llc(
                loss_fn,
                {**dict(model.named_parameters()), **dict(model.named_buffers())},
                batches,
                num_chains=self.num_chains,
                num_draws=int(self.draws_count or MAX_AUTO_DRAWS),
                num_burnin=self.num_burnin,
                step_size=self.step_size,
                n_beta=self.resolved_n_beta(),
                localization=self.localization,
                generator=noise,
            )
        flagged = int(estimate.diverged.sum())
        if flagged:
            rank_zero_warn(f"{type(self).__name__} at step {step}: {estimate.summary()}")
        return {
            f"{self.prefix}/mean": estimate.llc,
            f"{self.prefix}/mean_se": estimate.llc_std / math.sqrt(self.num_chains),
            f"{self.prefix}/std": estimate.llc_std,
            f"{self.prefix}/n_beta": estimate.n_beta,
            f"{self.prefix}/init_loss": estimate.init_loss,
            f"{self.prefix}/flagged": float(flagged),
            f"{self.prefix}/trace_rise": _mean_of_finite(estimate.trace_rise),
        }

    def _minibatches(self, step: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The ``num_burnin + num_draws`` minibatches every chain walks through, drawn without replacement each."""
        pool, targets = self.points["pool"], self.points["pool_targets"]
        size = min(int(self.points_per_set or pool.shape[0]), pool.shape[0])
        generator = self.generator(2 * step + 2)
        batches = []
        for _ in range(self.num_burnin + int(self.draws_count or MAX_AUTO_DRAWS)):
            index = torch.randperm(pool.shape[0], generator=generator)[:size]
            batches.append((pool[index].to(device), targets[index].to(device)))
        return batches

    # -- plot and state --------------------------------------------------------------------------------
    @override
    def figure_spec(self) -> tuple[str, dict[str, list[float]], str, str]:
        """λ̂ against the step with its band of ±1 standard error over chains, saved as ``llc.png``."""
        name = f"{self.prefix}/mean"
        return "llc", {name: self.history.get(name, [])}, "λ̂ (local learning coefficient)", "LLC"

    @override
    def state_key_fields(self) -> dict[str, Any]:
        return {**super().state_key_fields(), "behavioural": self.behavioural}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "train_size": self.train_size, "num_draws": self.draws_count}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.train_size = state_dict.get("train_size")
        if state_dict.get("num_draws") is not None:
            self.draws_count = int(state_dict["num_draws"])


def _mean_of_finite(values: torch.Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else math.nan
