"""Progressive self-knowledge distillation (PS-KD): the target schedule of Kim et al., ICCV 2021.

At epoch ``e`` (0-based) of ``T``, the target for a sample with label ``y`` is

    target_e = (1 − α_e)·onehot(y) + α_e·p(x),        α_e = α_T·(e + 1)/T        (paper Eq. 6)

where ``p(x)`` is the model's own softmax prediction (temperature 1) for that sample from the last
time it was trained on, detached. A sample with no stored prediction yet gets the one-hot target.
"""

from __future__ import annotations

import torch

from lightning_regs.functional.soft_targets import target_distribution

__all__ = ["pskd_alpha", "pskd_targets"]


def pskd_alpha(epoch: int, alpha_T: float, total_epochs: int) -> float:
    """``α_e = α_T·(e + 1)/T`` for the 0-based ``epoch``, clipped to ``[0, α_T]``.

    Example::

        >>> [round(pskd_alpha(e, 0.8, 4), 6) for e in range(4)]
        [0.2, 0.4, 0.6, 0.8]
    """
    if total_epochs < 1:
        raise ValueError(f"total_epochs must be at least 1, got {total_epochs}.")
    return min(max(alpha_T * (epoch + 1) / total_epochs, 0.0), alpha_T)


def pskd_targets(
    labels: torch.Tensor,
    previous: torch.Tensor,
    alpha: float,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(1 − α)·onehot(labels) + α·previous``; rows not ``seen`` get ``onehot(labels)``.

    Args:
        labels: int64 class ids ``(B,)``, or the current target distribution ``(B, C)`` (when another
            target refinement ran first, e.g. label smoothing), which then takes the place of the one-hot.
        previous: the stored predictions ``(B, C)`` (probabilities).
        alpha: the mixing weight ``α_e``.
        seen: bool ``(B,)``: whether each row has a stored prediction; all ``True`` when ``None``.

    Returns:
        float32 soft targets ``(B, C)``, each row summing to one when ``previous``'s rows do.

    Example::

        >>> pskd_targets(torch.tensor([0, 1]), torch.tensor([[0.5, 0.5], [0.25, 0.75]]), 0.5).tolist()
        [[0.75, 0.25], [0.125, 0.875]]
    """
    if previous.dim() != 2 or previous.shape[0] != labels.shape[0]:
        raise ValueError(f"previous must be ({labels.shape[0]}, C) probabilities, got {tuple(previous.shape)}.")
    try:
        base = target_distribution(labels, previous.shape[1])
    except ValueError:
        raise ValueError(
            f"labels must be int64 class ids (B,) or (B, {previous.shape[1]}) probabilities, got dtype "
            f"{labels.dtype} shape {tuple(labels.shape)}."
        ) from None
    mixed = base.mul(1.0 - alpha).add_(previous.float(), alpha=alpha)
    if seen is None:
        return mixed
    return torch.where(seen.unsqueeze(1), mixed, base)
