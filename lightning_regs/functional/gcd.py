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

from lightning_regs.distributed import unique_by_index

__all__ = ["gcd_accuracy", "gcd_accuracy_balanced", "gcd_accuracy_v1"]


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
    predictions, targets, known_mask = _prepare(predictions, targets, known, indices)
    correct = _matched(predictions, targets)
    return {"all": _mean(correct), "old": _mean(correct[known_mask]), "new": _mean(correct[~known_mask])}


def gcd_accuracy_v1(
    predictions: torch.Tensor,
    targets: torch.Tensor,
    known: torch.Tensor | Sequence[int],
    indices: torch.Tensor | None = None,
) -> dict[str, float]:
    """The older protocol (``split_cluster_acc_v1``): a separate Hungarian matching on the Old and on the New samples.

    ``all`` is the sample-weighted mean of the two. Each group may reuse the other's clusters, so this
    is never below :func:`gcd_accuracy`'s Old/New; the papers since SimGCD report v2.

    Example::

        >>> targets = torch.tensor([0, 0, 1, 1])
        >>> gcd_accuracy_v1(torch.tensor([0, 0, 0, 0]), targets, known=[0])
        {'all': 1.0, 'old': 1.0, 'new': 1.0}
    """
    predictions, targets, known_mask = _prepare(predictions, targets, known, indices)
    old = _matched(predictions[known_mask], targets[known_mask])
    new = _matched(predictions[~known_mask], targets[~known_mask])
    return {"all": _mean(torch.cat([old, new])), "old": _mean(old), "new": _mean(new)}


def gcd_accuracy_balanced(
    predictions: torch.Tensor,
    targets: torch.Tensor,
    known: torch.Tensor | Sequence[int],
    indices: torch.Tensor | None = None,
) -> dict[str, float]:
    """Per-class v2 (``split_cluster_acc_v2b``): :func:`gcd_accuracy`'s matching, then per-class accuracies averaged.

    ``old``/``new`` average the accuracies of the classes in each group, ``all`` those of every class present.

    Example::

        >>> targets = torch.tensor([0, 0, 0, 1])
        >>> gcd_accuracy_balanced(torch.tensor([0, 0, 0, 0]), targets, known=[0])
        {'all': 0.5, 'old': 1.0, 'new': 0.0}
    """
    predictions, targets, known_mask = _prepare(predictions, targets, known, indices)
    correct = _matched(predictions, targets)
    classes = targets.unique()
    per_class = torch.stack([correct[targets == c].double().mean() for c in classes])
    class_known = torch.stack([known_mask[targets == c][0] for c in classes])
    return {"all": _mean(per_class), "old": _mean(per_class[class_known]), "new": _mean(per_class[~class_known])}


def _mean(values: torch.Tensor) -> float:
    return float(values.double().mean()) if values.numel() else float("nan")


def _matched(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per sample, whether its prediction is its class's cluster under the maximum-weight one-to-one matching."""
    if not len(targets):
        return torch.zeros(0, dtype=torch.bool)
    size = int(max(predictions.max(), targets.max())) + 1
    counts = torch.bincount(predictions * size + targets, minlength=size * size).view(size, size)
    rows, cols = linear_sum_assignment(counts.numpy(), maximize=True)
    cluster_of_class = torch.empty(size, dtype=torch.long)
    cluster_of_class[torch.as_tensor(cols)] = torch.as_tensor(rows, dtype=torch.long)
    return predictions == cluster_of_class[targets]


def _prepare(
    predictions: torch.Tensor,
    targets: torch.Tensor,
    known: torch.Tensor | Sequence[int],
    indices: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate, flatten to CPU int64, resolve ``known`` to a per-sample mask and drop repeated ``indices``."""
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
    return predictions, targets, known_mask
