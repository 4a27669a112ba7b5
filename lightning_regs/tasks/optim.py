"""Optimizers and learning-rate schedules of the papers' recipes, buildable from YAML."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["OptimizerName", "SchedulerName", "WarmupSchedule", "build_optimizer", "recipe_optimizers"]

OptimizerName = Literal["sgd", "adamw"]
SchedulerName = Literal["constant", "step", "cosine"]


def build_optimizer(
    parameters: Iterable[nn.Parameter],
    name: OptimizerName,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    nesterov: bool = True,
) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over ``parameters``.

    Example::

        >>> opt = build_optimizer(nn.Linear(2, 2).parameters(), "sgd", lr=0.1, weight_decay=5e-4)
        >>> type(opt).__name__, opt.defaults["nesterov"]
        ('SGD', True)
    """
    if name == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=lr,
            momentum=momentum,
            nesterov=nesterov and momentum > 0,
            weight_decay=weight_decay,
        )
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"Unknown optimizer {name!r}: use 'sgd' or 'adamw'.")


class WarmupSchedule:
    """The learning-rate factor at an optimizer step: linear warm-up, then constant, step or cosine decay.

    Epochs may be fractional: the factor is evaluated at ``step / steps_per_epoch`` so that warm-up
    is smooth and milestones fall where the papers put them. A picklable class rather than a closure,
    so it survives ``ddp_spawn`` and its fields land in the checkpoint through ``LambdaLR``.

    Args:
        kind: ``constant``, ``step`` (×``gamma`` at each milestone epoch) or ``cosine`` (to
            ``min_lr_ratio`` at ``total_steps``).
        total_steps: optimizer steps in the whole run.
        steps_per_epoch: optimizer steps per epoch.
        warmup_epochs: epochs of linear warm-up from ``1/steps`` of the rate to the full rate.
        milestones: epochs at which ``step`` multiplies the rate by ``gamma``.
        gamma: the ``step`` decay factor.
        min_lr_ratio: the ``cosine`` floor as a fraction of the base rate.

    Example::

        >>> s = WarmupSchedule("step", total_steps=300, steps_per_epoch=1, milestones=[150, 225])
        >>> [round(s(e), 4) for e in (0, 149, 150, 225)]
        [1.0, 1.0, 0.1, 0.01]
    """

    def __init__(
        self,
        kind: SchedulerName,
        total_steps: int,
        steps_per_epoch: float,
        warmup_epochs: float = 0.0,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        min_lr_ratio: float = 0.0,
    ) -> None:
        if kind not in ("constant", "step", "cosine"):
            raise ValueError(f"Unknown scheduler {kind!r}: use 'constant', 'step' or 'cosine'.")
        if total_steps < 1 or steps_per_epoch <= 0:
            raise ValueError(f"total_steps ({total_steps}) and steps_per_epoch ({steps_per_epoch}) must be positive.")
        self.kind = kind
        self.total_steps = int(total_steps)
        self.steps_per_epoch = float(steps_per_epoch)
        self.warmup_steps = float(warmup_epochs) * self.steps_per_epoch
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "step":
            epoch = step / self.steps_per_epoch
            return self.gamma ** sum(epoch >= milestone for milestone in self.milestones)
        if self.kind == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1.0)
            progress = min((step - self.warmup_steps) / span, 1.0)
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0


def recipe_optimizers(module: Any, settings: Any) -> dict[str, Any]:
    """``configure_optimizers`` of the tasks' recipes: :func:`build_optimizer` and a per-step :class:`WarmupSchedule`.

    ``settings`` holds ``optimizer``, ``lr``, ``weight_decay``, ``momentum``, ``nesterov``, ``scheduler``,
    ``warmup_epochs``, ``milestones``, ``gamma`` and ``min_lr_ratio`` (a task's ``task_settings``); ``module`` is the
    LightningModule, whose Trainer gives the run's length.

    Raises:
        ValueError: for the ``step`` schedule or a warm-up (both set in epochs) when the Trainer has no ``max_epochs``.
    """
    optimizer = build_optimizer(
        module.parameters(),
        settings.optimizer,
        settings.lr,
        settings.weight_decay,
        momentum=settings.momentum,
        nesterov=settings.nesterov,
    )
    total_steps = max(int(module.trainer.estimated_stepping_batches), 1)
    max_epochs = module.trainer.max_epochs
    if max_epochs is None or max_epochs < 1:
        if settings.scheduler == "step" or settings.warmup_epochs:
            raise ValueError(
                "The 'step' schedule and warm-up are set in epochs: give the Trainer max_epochs "
                "(it has none), or use scheduler='cosine' or 'constant' without warm-up."
            )
        max_epochs = 1
    schedule = WarmupSchedule(
        settings.scheduler,
        total_steps=total_steps,
        steps_per_epoch=total_steps / max_epochs,
        warmup_epochs=settings.warmup_epochs,
        milestones=settings.milestones,
        gamma=settings.gamma,
        min_lr_ratio=settings.min_lr_ratio,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
