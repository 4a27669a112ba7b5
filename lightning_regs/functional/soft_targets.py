"""Soft targets as class distributions: one-hot of class ids, and label smoothing (Szegedy et al., 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["label_smoothing_targets", "target_distribution"]


def target_distribution(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``target`` as float32 probabilities ``(B, C)``: the one-hot of int64 ids ``(B,)``, or soft targets as given.

    Raises:
        ValueError: when ``target`` is neither ``(B,)`` ids nor ``(B, num_classes)`` probabilities.

    Example::

        >>> target_distribution(torch.tensor([2, 0]), 3).tolist()
        [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    if target.is_floating_point() and target.dim() == 2 and target.shape[1] == num_classes:
        return target.float()
    if not target.is_floating_point() and target.dim() == 1:
        return F.one_hot(target, num_classes).float()
    raise ValueError(
        f"Targets must be int64 class ids (B,) or float probabilities (B, {num_classes}); got dtype {target.dtype} "
        f"and shape {tuple(target.shape)}."
    )


def label_smoothing_targets(target: torch.Tensor, smoothing: float, num_classes: int) -> torch.Tensor:
    """``(1 − ε)·t + ε/C``, with ``t`` the one-hot of class ids or a distribution already given.

    This is the target ``F.cross_entropy(..., label_smoothing=ε)`` trains towards, written out so that
    it composes with other target refinements (PS-KD) and with soft targets.

    Example::

        >>> label_smoothing_targets(torch.tensor([1, 0]), 0.5, 2).tolist()
        [[0.25, 0.75], [0.75, 0.25]]
    """
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing must lie in [0, 1], got {smoothing}.")
    distribution = target_distribution(target, num_classes)
    return distribution.mul(1.0 - smoothing).add_(smoothing / num_classes)
