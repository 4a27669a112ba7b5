"""LegoGCD's margin-aware prior ``q̂``: state (a checkpointed buffer), kept beside its user, the LegoGCD mixin.

The equation that reads it is :func:`lightning_regs.functional.lego_gcd.local_entropy_regularization`;
``lightning_regs.functional.LogitPriorEMA`` re-exports this class.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LogitPriorEMA"]


class LogitPriorEMA(nn.Module):
    """The margin-aware prior ``q̂``: an EMA of the batch-mean prediction, kept as a (checkpointed) buffer.

    ``q̂ ← m·q̂ + (1 - m)·mean_rows(probs)`` with ``probs = softmax(z)`` at temperature 1 over all rows,
    detached; ``q̂₀ = 1/K`` and ``m = 0.999`` in LegoGCD.

    Example::

        >>> ema = LogitPriorEMA(2, momentum=0.5)
        >>> ema.update(torch.tensor([[1.0, 0.0], [1.0, 0.0]])).tolist()
        [0.75, 0.25]
    """

    prior: torch.Tensor

    def __init__(self, num_classes: int, momentum: float = 0.999) -> None:
        super().__init__()
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}.")
        self.momentum = momentum
        self.register_buffer("prior", torch.full((num_classes,), 1.0 / num_classes))

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> torch.Tensor:
        """Fold ``probs`` ``(N, K)`` (or an already averaged ``(K,)``) into ``q̂`` and return it."""
        mean = probs.detach().to(self.prior).reshape(-1, self.prior.numel()).mean(dim=0)
        self.prior.mul_(self.momentum).add_(mean, alpha=1 - self.momentum)
        return self.prior
