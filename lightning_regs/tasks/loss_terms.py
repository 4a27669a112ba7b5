"""Loss terms as modules: a term of the training objective that owns its buffers and its weight.

A method that adds a term to a task's loss (an auxiliary loss, a regularizer on the logits, the attention or the
features) is a :class:`LossTerm`: ``forward(outputs, batch)`` returns the unweighted scalar, ``weight`` (or an
overridden :meth:`LossTerm.current_weight`) scales it, and its buffers are saved with the task. Hand terms to
``ImageClassifier(loss_terms=[...])``: the objective becomes ``compute_loss(logits, batch) + Σ weight·term``, each
term logged as ``train/<name>``. ``outputs`` is what the model returned, as a dict (:func:`model_outputs`, from
:mod:`lightning_regs.functional.outputs`).

Example::

    >>> import torch
    >>> class LogitNorm(LossTerm):
    ...     def forward(self, outputs, batch):
    ...         return outputs["logits"].pow(2).sum(dim=1).mean()
    >>> term = LogitNorm("logit_norm", weight=0.1)
    >>> term(model_outputs(torch.tensor([[3.0, 4.0]])), batch=None).item(), term.current_weight(step=0, epoch=0)
    (25.0, 0.1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from lightning_regs.functional.outputs import model_outputs  # re-exported: tasks.model_outputs is public

__all__ = ["LossTerm", "model_outputs"]


class LossTerm(nn.Module):
    """One term of a training objective: an unweighted scalar of the model's outputs and the batch, with its weight.

    Subclass it and implement :meth:`forward`; register buffers (running statistics, priors, queues) in
    ``__init__`` like in any module: a task holding the term saves them in its checkpoints (``ImageClassifier``
    under ``loss_terms.<name>.``) and moves them with ``.to()``. :meth:`update` runs once per training step after
    the loss, without gradients, for state that follows the training (an EMA). A schedule over the run is an
    override of :meth:`current_weight`.

    Args:
        name: the term's name: its key in the task (``loss_terms.<name>``) and its metric (``train/<name>``); a
            Python identifier.
        weight: the factor of the term in the loss (any finite number).

    Example::

        >>> import torch
        >>> class FeatureNorm(LossTerm):
        ...     '''The mean squared norm of the features, with a linear warm-up of the weight over 10 epochs.'''
        ...     def __init__(self, weight: float = 1.0) -> None:
        ...         super().__init__("feature_norm", weight)
        ...         self.register_buffer("calls", torch.zeros((), dtype=torch.long))  # saved with the task
        ...     def forward(self, outputs, batch):
        ...         return outputs["features"].pow(2).sum(dim=1).mean()
        ...     def update(self, outputs, batch):
        ...         self.calls += 1
        ...     def current_weight(self, step, epoch):
        ...         return self.weight * min(1.0, epoch / 10)
        >>> term = FeatureNorm(weight=0.5)
        >>> term({"logits": torch.zeros(1, 2), "features": torch.ones(1, 4)}, batch=None).item()
        4.0
        >>> term.current_weight(step=100, epoch=2), sorted(term.state_dict())
        (0.1, ['calls'])
    """

    def __init__(self, name: str, weight: float = 1.0) -> None:
        super().__init__()
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(
                f"A loss term's name is its key in the task and its metric train/<name>: give a Python identifier "
                f"such as 'ler' or 'feature_norm', got {name!r}."
            )
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"The weight of loss term {name!r} must be a finite number, got {weight!r}.")
        self.name = name
        self.weight = float(weight)

    def current_weight(self, step: int, epoch: int) -> float:
        """The term's weight at optimizer step ``step`` of epoch ``epoch``: ``weight``; override for a schedule."""
        return self.weight

    @override
    def forward(self, outputs: Mapping[str, torch.Tensor], batch: Any) -> torch.Tensor:
        """The unweighted scalar term of ``outputs`` (at least ``"logits"``; see :func:`model_outputs`) on ``batch``."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward(outputs, batch) -> scalar Tensor.")

    def update(self, outputs: Mapping[str, torch.Tensor], batch: Any) -> None:
        """Called once per training step after the loss, without gradients; update buffers here. Default: nothing."""

    @override
    def extra_repr(self) -> str:
        return f"name={self.name!r}, weight={self.weight}"
