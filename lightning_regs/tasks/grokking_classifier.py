"""The classifier of the grokking recipes: MSE on one-hot targets, AdamW, constant learning rate."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from lightning_regs.batch import read_step
from lightning_regs.functional.soft_targets import target_distribution
from lightning_regs.tasks.image_classifier import ImageClassifier
from lightning_regs.tasks.optim import OptimizerName, SchedulerName

__all__ = ["GrokkingClassifier"]


class GrokkingClassifier(ImageClassifier):
    """:class:`~lightning_regs.tasks.image_classifier.ImageClassifier` with the Omnigrok loss and optimizer.

    Liu et al. (Omnigrok, ICLR 2023) and Humayun et al. (ICML 2024) grok MNIST with an MLP trained by
    the mean squared error between the logits and the one-hot targets (``mean`` over batch × classes,
    as ``nn.MSELoss``), AdamW (lr 1e-3, weight decay 0.01) and no schedule: these are the defaults.
    ``loss="cross_entropy"`` gives the usual loss. Soft ``(B, C)`` targets are used as the regression
    targets. Logs the same names as ``ImageClassifier``.

    Args:
        backbone: the network (``MLP(..., init_scale=8.0)`` for grokking).
        num_classes: number of classes.
        loss: ``mse`` (on one-hot targets) or ``cross_entropy``.
        optimizer: ``adamw`` or ``sgd``.
        lr: learning rate.
        weight_decay: (decoupled) weight decay.
        scheduler: ``constant`` (the recipe), ``cosine`` or ``step``.
        **kwargs: the other :class:`ImageClassifier` arguments.

    Example::

        >>> from lightning_regs.models import MLP
        >>> task = GrokkingClassifier(MLP(in_features=64, num_classes=10, width=16), num_classes=10)
        >>> batch = {"image": torch.randn(4, 1, 8, 8), "target": torch.tensor([0, 1, 2, 3])}
        >>> out = task.training_step(batch, 0)
        >>> bool(out["loss"] > 0), out["logits"].shape
        (True, torch.Size([4, 10]))
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        loss: Literal["mse", "cross_entropy"] = "mse",
        optimizer: OptimizerName = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        scheduler: SchedulerName = "constant",
        **kwargs: Any,
    ) -> None:
        if loss not in ("mse", "cross_entropy"):
            raise ValueError(f"loss must be 'mse' or 'cross_entropy', got {loss!r}.")
        super().__init__(
            backbone, num_classes, optimizer=optimizer, lr=lr, weight_decay=weight_decay, scheduler=scheduler, **kwargs
        )
        self.loss_name = loss

    @override
    def compute_loss(self, logits: torch.Tensor, batch: Any) -> torch.Tensor:
        """MSE between the logits and the one-hot (or soft) targets; cross-entropy with ``loss="cross_entropy"``."""
        if self.loss_name == "cross_entropy":
            return super().compute_loss(logits, batch)
        target = read_step(batch).target
        return F.mse_loss(logits, target_distribution(target, self.num_classes).to(logits.dtype))
