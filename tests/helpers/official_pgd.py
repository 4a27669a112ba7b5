"""The grokking repository's ``attacks.PGD`` (ℓ∞), re-derived from what it computes: the oracle of the PGD tests."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["official_linf_pgd"]


def official_linf_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    alpha: float,
    steps: int,
    start: torch.Tensor,
    low: float | None = None,
    high: float | None = None,
) -> torch.Tensor:
    """Clamp the random start, then ``steps`` sign steps of ``alpha``, each projected onto the ball and clamped.

    ``low``/``high`` ``None``: the official fallback, the smallest and largest value of ``x`` (the attacked batch).
    """
    low = float(x.min()) if low is None else low
    high = float(x.max()) if high is None else high
    x_adv = (x + start).clamp(low, high)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)
        x_adv = x_adv.detach() + alpha * gradient.sign()
        x_adv = torch.min(torch.max(x_adv, x - epsilon), x + epsilon).clamp(low, high)
    return x_adv.detach()
