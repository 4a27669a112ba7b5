"""Activation functions written from their papers' equations (pure torch, no Lightning import).

CRReLU (Sun et al., "A Method on Searching Better Activation Functions", arXiv 2405.12954): ReLU plus a
learnable multiple of the derivative of a Gaussian, ``CRReLU(x) = ReLU(x) + ε·x·exp(−x²/2)``.
"""

from __future__ import annotations

import torch

__all__ = ["crrelu"]


def crrelu(x: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
    """Correction-regularized ReLU: ``relu(x) + eps · x · exp(−x² / 2)``, elementwise.

    ``eps = 0`` is ReLU exactly. The correction ``x·exp(−x²/2)`` is odd, largest in size at ``|x| = 1``
    (``e^{−1/2} ≈ 0.607``) and vanishes for large ``|x|``, so the function differs from ReLU only near
    zero; ``∂f/∂eps = x·exp(−x²/2)``.

    Args:
        x: any tensor.
        eps: the scalar ``ε``: a float, or a 0-dim tensor (a learnable parameter receives its gradient).
            A 0-dim tensor does not change the dtype of the result (``x`` in bfloat16 stays bfloat16).

    Returns:
        A tensor of the shape and dtype of ``x``. At ``x = ±inf`` the correction is ``inf · 0 = nan``.

    Example::

        >>> import math, torch
        >>> y = crrelu(torch.tensor([-1.0, 0.0, 1.0]), eps=0.5)
        >>> torch.allclose(y, torch.tensor([-0.5 * math.exp(-0.5), 0.0, 1.0 + 0.5 * math.exp(-0.5)]))
        True
        >>> torch.equal(crrelu(torch.tensor([-2.0, 3.0]), eps=0.0), torch.tensor([0.0, 3.0]))
        True
    """
    return torch.relu(x) + eps * (x * torch.exp(-0.5 * x * x))
