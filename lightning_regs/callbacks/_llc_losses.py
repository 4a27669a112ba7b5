"""The losses the LLC monitor samples: the task's own (or a user's) and the behavioural output distance."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch.func import functional_call

from lightning_regs.batch import IMAGE, TARGET
from lightning_regs.functional.classification import classification_loss
from lightning_regs.functional.outputs import logits_of

__all__ = ["behavioural_loss", "task_loss"]

LossFn = Callable[[dict[str, torch.Tensor], Any], torch.Tensor]
_WHO = "The module the LLC monitor measures"


def task_loss(
    model: torch.nn.Module,
    pl_module: pl.LightningModule,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
) -> LossFn:
    """``loss_fn(params, (images, targets))``: ``loss`` if given, else the task's ``compute_loss``, else cross-entropy.

    Example::

        >>> net = torch.nn.Linear(3, 2)
        >>> fn = task_loss(net, pl.LightningModule(), None)
        >>> batch = (torch.zeros(4, 3), torch.tensor([0, 1, 0, 1]))
        >>> bool(fn(dict(net.named_parameters()), batch) > 0)
        True
    """
    compute = getattr(pl_module, "compute_loss", None) if loss is None else None

    def loss_fn(params: dict[str, torch.Tensor], batch: Any) -> torch.Tensor:
        images, targets = batch
        logits = logits_of(functional_call(model, params, (images,)), _WHO)
        if loss is not None:
            return loss(logits, targets)
        if compute is not None:
            return compute(logits, {IMAGE: images, TARGET: targets})
        return classification_loss(logits, targets)

    return loss_fn


def behavioural_loss(
    model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[LossFn, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The output distance to the current network, ``mean_b ‖f_w(x_b) − f_w*(x_b)‖²``, and its minibatches.

    Each minibatch's targets are replaced by the current outputs ``f_w*(x)``, computed once here; the loss is
    0 at ``w*``.

    Example::

        >>> net = torch.nn.Linear(3, 2)
        >>> fn, batches = behavioural_loss(net, [(torch.randn(4, 3), torch.zeros(4))])
        >>> float(fn(dict(net.named_parameters()), batches[0]))
        0.0
    """
    with torch.no_grad():
        references = [logits_of(model(images), _WHO).detach() for images, _ in batches]

    def loss_fn(params: dict[str, torch.Tensor], batch: Any) -> torch.Tensor:
        images, reference = batch
        outputs = logits_of(functional_call(model, params, (images,)), _WHO)
        return (outputs - reference).pow(2).flatten(1).sum(dim=1).mean()

    return loss_fn, [(images, reference) for (images, _), reference in zip(batches, references, strict=True)]
