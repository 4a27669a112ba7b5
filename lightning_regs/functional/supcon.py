"""Supervised contrastive loss (Khosla et al., NeurIPS 2020), the task loss of InfoPro's best configuration."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["SupConAnchors", "supervised_contrastive_loss"]

SupConAnchors = Literal["with_positives", "all"]


def supervised_contrastive_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    anchors: SupConAnchors = "with_positives",
) -> torch.Tensor:
    """``L^sup_out`` (Khosla et al., Eq. 2) over one view per sample, on L2-normalized ``features``.

    For each anchor ``i`` with positives ``P(i) = {p != i : y_p = y_i}``:
    ``l_i = -(tau / tau_base) / |P(i)| · sum_{p in P(i)} log( exp(z_i·z_p / tau) / sum_{a != i} exp(z_i·z_a / tau) )``,
    averaged over the anchors that have at least one positive (an anchor alone in its class has no term).
    ``anchors="all"`` is the reference code's mean (SupContrast, as InfoPro ships it): over every anchor,
    one without a positive counting as a zero term, which scales the loss by the share of anchors that have
    one. A batch with no positive pair gives 0, still attached to the graph.

    Args:
        features: ``(B, D)`` embeddings (normalized here).
        labels: ``(B,)`` class ids.
        temperature: ``tau`` (0.07 in InfoPro).
        base_temperature: ``tau_base``; the loss is scaled by ``tau / tau_base``.
        anchors: ``"with_positives"`` (default) or ``"all"`` (the official code's normalization).

    Example::

        >>> z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
        >>> loss = supervised_contrastive_loss(z, torch.tensor([0, 0, 1]), temperature=1.0, base_temperature=1.0)
        >>> round(float(loss), 4)  # -log(e / (e + 1)) for both anchors of class 0
        0.3133
    """
    if features.dim() != 2 or labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"Need features (B, D) and labels (B,); got {tuple(features.shape)} and {tuple(labels.shape)}."
        )
    if anchors not in ("with_positives", "all"):
        raise ValueError(f"anchors must be 'with_positives' or 'all' (the official code); got {anchors!r}.")
    if temperature <= 0 or base_temperature <= 0:
        raise ValueError(f"Temperatures must be positive; got {temperature} and {base_temperature}.")
    # At least float32 (half-precision logits / 0.07 overflow), float64 kept.
    z = F.normalize(features.to(torch.promote_types(features.dtype, torch.float32)), dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = positives.sum(dim=1)
    has_positive = counts > 0
    if not bool(has_positive.any()):
        return features.sum() * 0.0
    mean_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1)[has_positive] / counts[has_positive]
    per_anchor = mean_log_prob.sum() / len(z) if anchors == "all" else mean_log_prob.mean()
    return -(temperature / base_temperature) * per_anchor
