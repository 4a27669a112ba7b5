"""The loss terms a classifier adds to its training loss: registered, weighted, updated, and required to be applied
(:class:`LossTermHost`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from lightning_regs.tasks.loss_terms import LossTerm

__all__ = ["LossTermHost"]


class LossTermHost:
    """Mixin of :class:`~lightning_regs.tasks.ImageClassifier` (before ``LightningModule`` in the bases): its
    ``loss_terms``.

    The host sets ``loss_terms`` (an :class:`~torch.nn.ModuleDict`, saved with the weights under
    ``loss_terms.<name>.``), ``reserved_term_names`` and ``_loss_terms_applied`` in its ``__init__``, and calls
    :meth:`term_losses` and :meth:`update_loss_terms` in its training step.
    """

    loss_terms: nn.ModuleDict
    reserved_term_names: frozenset[str]
    _loss_terms_applied: bool

    def add_loss_term(self, term: LossTerm) -> LossTerm:
        """Add ``term`` to the training loss, under ``loss_terms[term.name]``; returns it.

        Raises:
            TypeError: when ``term`` is not a :class:`~lightning_regs.tasks.LossTerm`.
            ValueError: when the task already has a term of that name, or the name is one of the task's metrics.
        """
        if not isinstance(term, LossTerm):
            raise TypeError(
                f"loss_terms take lightning_regs.tasks.LossTerm modules (forward(outputs, batch) -> scalar, a name "
                f"and a weight), got {type(term).__name__}."
            )
        if term.name in self.loss_terms:
            raise ValueError(
                f"Two loss terms are named {term.name!r} ({type(self.loss_terms[term.name]).__name__} and "
                f"{type(term).__name__}): a term's name is its key in the checkpoint and its metric train/<name>; "
                "give each term its own name."
            )
        if term.name in self.reserved_term_names:
            raise ValueError(
                f"A loss term may not be named {term.name!r}: train/{term.name} is {type(self).__name__}'s own metric."
            )
        self.loss_terms[term.name] = term
        return term

    def term_losses(
        self, outputs: Mapping[str, torch.Tensor], batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``Σ current_weight·term(outputs, batch)`` over :attr:`loss_terms` and each term's unweighted value.

        A subclass with its own ``training_step`` calls this (and :meth:`update_loss_terms`) to keep its terms;
        a run whose training step never calls it while the task has terms stops with a named error.
        """
        self._loss_terms_applied = True
        values = {name: term(outputs, batch) for name, term in self.loss_terms.items()}
        step, epoch = self.global_step, self.current_epoch
        total = sum(
            (self.loss_terms[name].current_weight(step, epoch) * value for name, value in values.items()),
            start=outputs["logits"].new_zeros(()),
        )
        return total, values

    @torch.no_grad()
    def update_loss_terms(self, outputs: Mapping[str, torch.Tensor], batch: Any) -> None:
        """Let each loss term update its state (:meth:`LossTerm.update`), once per training step."""
        for term in self.loss_terms.values():
            term.update(outputs, batch)

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if len(self.loss_terms) and not self._loss_terms_applied:
            raise RuntimeError(
                f"{type(self).__name__} has loss terms {sorted(self.loss_terms)} but its training_step never added "
                "them: call `self.term_losses(outputs, batch)` (and `self.update_loss_terms(outputs, batch)`) in it, "
                "as ImageClassifier.training_step does, or build the task without loss_terms."
            )
