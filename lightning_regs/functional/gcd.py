"""Generalized category discovery accuracy: one Hungarian matching over all classes, then All/Old/New.

This is the protocol of SimGCD (``split_cluster_acc_v2``): predicted cluster ids are matched to
ground-truth classes by a single optimal one-to-one assignment over all classes
(:func:`scipy.optimize.linear_sum_assignment`, the maximum-weight matching of the contingency
table), and the accuracy under that matching is reported on all samples, on the samples of known
("Old") classes and on those of novel ("New") classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scipy.optimize import linear_sum_assignment

from lightning_regs.functional.distributed import unique_by_index

__all__ = ["gcd_accuracy"]


def gcd_accuracy(
    predictions: torch.Tensor,
    targets: torch.Tensor,
    known: torch.Tensor | Sequence[int],
    indices: torch.Tensor | None = None,
) -> dict[str, float]:
    """All/Old/New clustering accuracy under one Hungarian matching over all classes.

    Args:
        predictions: ``(N,)`` predicted cluster ids (non-negative integers).
        targets: ``(N,)`` ground-truth class ids (non-negative integers).
        known: either a boolean ``(N,)`` mask of the samples whose class is known ("Old"), or the
            ids of the known classes.
        indices: optional ``(N,)`` sample indices; repeated indices (the padding DistributedSampler
            adds when gathering under DDP) are counted once, at their first occurrence.

    Returns:
        ``{"all", "old", "new"}`` accuracies in [0, 1]; ``old``/``new`` are ``nan`` when no sample
        belongs to that group.

    Example::

        >>> import torch
        >>> preds = torch.tensor([1, 1, 0, 0, 2, 2])
        >>> targets = torch.tensor([0, 0, 1, 1, 2, 2])
        >>> gcd_accuracy(preds, targets, known=[0, 1])
        {'all': 1.0, 'old': 1.0, 'new': 1.0}
        >>> gcd_accuracy(torch.tensor([0, 0, 0, 0, 0, 0]), targets, known=[0, 1])["all"]
        0.3333333333333333
    """
    predictions = torch.as_tensor(predictions).flatten().long().cpu()
    targets = torch.as_tensor(targets).flatten().long().cpu()
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ in length.")
    if len(targets) == 0:
        raise ValueError("gcd_accuracy needs at least one sample.")
    if predictions.min() < 0 or targets.min() < 0:
        raise ValueError("predictions and targets must be non-negative class/cluster ids.")
    known = torch.as_tensor(known).cpu()
    if known.dtype == torch.bool:
        if known.shape != targets.shape:
            raise ValueError(
                f"A boolean `known` is a per-sample mask and must have shape {tuple(targets.shape)}, got "
                f"{tuple(known.shape)}; pass the known class ids as integers instead."
            )
        known_mask = known.flatten()
    else:
        known_mask = torch.isin(targets, known.flatten().long())
    if indices is not None:
        indices = torch.as_tensor(indices).flatten().cpu()
        if indices.shape != targets.shape:
            raise ValueError(f"indices {tuple(indices.shape)} must match targets {tuple(targets.shape)}.")
        _, predictions, targets, known_mask = unique_by_index(indices, predictions, targets, known_mask)

    size = int(max(predictions.max(), targets.max())) + 1
    counts = torch.bincount(predictions * size + targets, minlength=size * size).view(size, size)
    rows, cols = linear_sum_assignment(counts.numpy(), maximize=True)
    cluster_of_class = torch.empty(size, dtype=torch.long)
    cluster_of_class[torch.as_tensor(cols)] = torch.as_tensor(rows, dtype=torch.long)
    correct = predictions == cluster_of_class[targets]

    def mean(mask: torch.Tensor) -> float:
        return float(correct[mask].double().mean()) if bool(mask.any()) else float("nan")

    return {"all": float(correct.double().mean()), "old": mean(known_mask), "new": mean(~known_mask)}
