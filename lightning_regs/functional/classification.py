"""Cross-entropy with hard or soft targets, and the checks that make a wrong target fail loudly."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["classification_loss", "hard_labels", "is_soft_target"]


def is_soft_target(target: torch.Tensor) -> bool:
    """Whether ``target`` holds class probabilities ``(B, C)`` rather than class ids ``(B,)``."""
    return target.is_floating_point() and target.dim() == 2


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """Class ids: ``target`` itself, or the arg-max of soft targets.

    Example::

        >>> hard_labels(torch.tensor([[0.2, 0.8], [0.9, 0.1]])).tolist()
        [1, 0]
    """
    return target.argmax(dim=-1) if is_soft_target(target) else target


def classification_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` ``(B, C)`` against class ids ``(B,)`` or probabilities ``(B, C)``.

    With probabilities ``q`` this is ``mean_b(-sum_c q_bc log softmax(logits)_bc)``; the soft targets are
    used as given (no renormalization), so they must already sum to one.

    Raises:
        ValueError: naming the shapes and dtypes expected, when ``target`` is neither form.

    Example::

        >>> logits = torch.tensor([[2.0, 0.0]])
        >>> hard = classification_loss(logits, torch.tensor([0]))
        >>> soft = classification_loss(logits, torch.tensor([[1.0, 0.0]]))
        >>> torch.allclose(hard, soft)
        True
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (batch, classes), got shape {tuple(logits.shape)}.")
    if is_soft_target(target):
        if target.shape != logits.shape:
            raise ValueError(
                f"Soft targets must have the logits' shape {tuple(logits.shape)} (batch, classes); "
                f"got {tuple(target.shape)}."
            )
    elif target.dim() != 1 or target.is_floating_point() or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"Targets must be int64 class ids of shape ({logits.shape[0]},) or float probabilities of shape "
            f"{tuple(logits.shape)}; got dtype {target.dtype} and shape {tuple(target.shape)}."
        )
    if is_soft_target(target):
        target = target.float()
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)
