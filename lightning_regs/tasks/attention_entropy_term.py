"""AEM as a loss term: ``λ · Σ_n p_n log p_n`` over the attention of any MIL model that returns its scores."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from typing_extensions import override

from lightning_regs.batch import INSTANCE_MASK
from lightning_regs.functional.mil import attention_entropy_loss
from lightning_regs.tasks.loss_terms import LossTerm

__all__ = ["AttentionEntropyTerm"]


class AttentionEntropyTerm(LossTerm):
    """Attention entropy maximization (AEM; Zhang et al., 2024): the term ``-H(softmax(a))`` of a bag's attention.

    Added with ``weight`` λ to the task's loss (the paper: ``CE − λ·H``, λ = 0.1 in its README, 0 the baseline). It
    reads the model's **pre-softmax** attention scores ``outputs[key]`` (``(B, N)`` or ``(B, heads, N)``, averaged
    over heads) and the batch's ``instance_mask``, so any MIL model that returns its scores works: a dict with
    ``"attention"``, or an object with an ``.attention`` field (:class:`~lightning_regs.models.MILOutput`). Logged
    unweighted as ``train/<name>`` (``-H`` in nats, ≥ ``-log N``).

    Args:
        weight: λ, the factor of ``Σ p log p`` in the loss (≥ 0 maximizes the entropy).
        name: the term's name (``loss_terms.<name>``, ``train/<name>``).
        key: the output that holds the pre-softmax attention scores.

    Example::

        >>> import torch
        >>> term = AttentionEntropyTerm(weight=0.1)
        >>> outputs = {"logits": torch.zeros(1, 2), "attention": torch.zeros(1, 1, 4)}  # uniform over 4
        >>> round(term(outputs, {"instance_mask": torch.ones(1, 4, dtype=torch.bool)}).item(), 4)
        -1.3863
    """

    def __init__(self, weight: float = 0.1, name: str = "aem", key: str = "attention") -> None:
        super().__init__(name, weight)
        if weight < 0:
            raise ValueError(
                f"AttentionEntropyTerm(weight={weight}) would minimize the attention's entropy: AEM maximizes it with "
                "a weight λ ≥ 0 (the paper's 0.1; 0 is the baseline)."
            )
        self.key = key

    @override
    def forward(self, outputs: Mapping[str, torch.Tensor], batch: Any) -> torch.Tensor:
        if self.key not in outputs:
            held = sorted(outputs)
            what = "logits only (a model returning a Tensor gives just its logits)" if held == ["logits"] else held
            raise KeyError(
                f"{type(self).__name__} reads the model's pre-softmax attention scores from its output "
                f"'{self.key}', but the model's outputs hold {what}: return them beside the logits, e.g. "
                f"{{'logits': logits, '{self.key}': scores}} with scores (B, N) or (B, heads, N), as "
                "lightning_regs.models.AttentionMIL does (its MILOutput has both)."
            )
        mask = batch.get(INSTANCE_MASK) if isinstance(batch, Mapping) else None
        return attention_entropy_loss(outputs[self.key], mask)

    @override
    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, key={self.key!r}"
