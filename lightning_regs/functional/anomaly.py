"""Image- and pixel-level AUROC of anomaly scores, computed from ranks on RAW scores.

An anomaly score is any real number (a distance, a log-likelihood, a reconstruction error); only
its order matters. torchmetrics' ``BinaryAUROC`` applies a sigmoid when a batch holds values
outside [0, 1], deciding per ``update`` call, and the sigmoid saturates in float32 (every score
above ~17 becomes 1.0 and ties), so raw scores can give an AUROC that is not the true one. Here
the AUROC is the Mann-Whitney statistic of the scores' ranks (ties counted one half), in float64:
it is exactly ``sklearn.metrics.roc_auc_score`` and unchanged by any strictly increasing map of
the scores.

For pixel AUROC over many large maps, :func:`binned_auroc_counts` turns each batch into two
histograms over a FIXED score range; they add up across batches (and ranks, with an all-reduce),
so memory is ``O(num_bins)``. :func:`auroc_from_counts` gives the AUROC of the binned scores and
:func:`binned_auroc_error_bound` a bound on its distance to the exact AUROC (pairs of an anomalous
and a normal pixel that share a bin are counted one half instead of 0 or 1).

Example::

    >>> import torch
    >>> scores = torch.tensor([0.1, 40.0, -3.0, 7.5])
    >>> labels = torch.tensor([0, 1, 0, 1])
    >>> float(image_auroc(scores, labels)), float(image_auroc(scores.exp() * 5 - 2, labels))
    (1.0, 1.0)
"""

from __future__ import annotations

import torch

__all__ = [
    "auroc_from_counts",
    "binned_auroc_counts",
    "binned_auroc_error_bound",
    "image_auroc",
    "pixel_auroc",
    "rank_auroc",
]


def _check_binary(labels: torch.Tensor, what: str) -> torch.Tensor:
    labels = labels.reshape(-1)
    if labels.dtype != torch.bool:
        if labels.is_floating_point() and not torch.isfinite(labels).all():
            raise ValueError(f"{what} hold non-finite values; they must be 0 (normal) or 1 (anomalous).")
        bad = (labels != 0) & (labels != 1)
        if bad.any():
            raise ValueError(
                f"{what} must be 0 (normal) or 1 (anomalous); found {labels[bad][0].item()}. "
                "Binarize masks (mask > 0) before computing the AUROC."
            )
        labels = labels != 0
    return labels


def rank_auroc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve of ``scores`` for binary ``labels``, from average ranks (ties count 1/2).

    Args:
        scores: real-valued scores of any shape (higher means more anomalous); flattened.
        labels: 0/1 (or bool) of the same number of elements.

    Returns:
        A float64 scalar tensor in [0, 1].

    Raises:
        ValueError: on a size mismatch, non-finite scores, labels outside {0, 1}, or only one class present.

    Example::

        >>> float(rank_auroc(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([0, 0, 1, 1])))
        0.875
    """
    scores = scores.detach().reshape(-1)
    if scores.numel() != labels.numel():
        raise ValueError(f"scores ({scores.numel()} values) and labels ({labels.numel()} values) differ in size.")
    positive = _check_binary(labels.detach(), "labels")
    if not torch.isfinite(scores).all():
        raise ValueError("scores hold NaN or infinite values; the AUROC is undefined. Clean or clip them first.")
    num_pos = int(positive.sum())
    num_neg = positive.numel() - num_pos
    if num_pos == 0 or num_neg == 0:
        raise ValueError(
            f"The AUROC needs both normal and anomalous samples; got {num_pos} anomalous and {num_neg} normal. "
            "Evaluate on a set holding both (e.g. the MVTec AD test split)."
        )
    scores = scores.to(torch.float64)
    sorted_scores, order = torch.sort(scores)
    _, counts = torch.unique_consecutive(sorted_scores, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)  # 1-based rank of the last member of each tie group
    average_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.repeat_interleave(average_rank, counts)
    positive_rank_sum = ranks[positive[order]].sum()
    return (positive_rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)


def image_auroc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Image-level AUROC: one raw anomaly score per image ``(N,)`` against labels ``(N,)`` (0 good, 1 anomalous).

    Example::

        >>> float(image_auroc(torch.tensor([-5.0, 3.0, 100.0]), torch.tensor([0, 1, 1])))
        1.0
    """
    if scores.dim() != 1 or labels.dim() != 1:
        raise ValueError(
            f"image_auroc takes one score and one label per image, shapes (N,) and (N,); got {tuple(scores.shape)} "
            f"and {tuple(labels.shape)}. Reduce anomaly maps to a score first (e.g. their maximum), or use pixel_auroc."
        )
    return rank_auroc(scores, labels)


def _match_maps(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if maps.shape != masks.shape:
        squeezed_maps = maps.squeeze(1) if maps.dim() == 4 and maps.shape[1] == 1 else maps
        squeezed_masks = masks.squeeze(1) if masks.dim() == 4 and masks.shape[1] == 1 else masks
        if squeezed_maps.shape != squeezed_masks.shape:
            raise ValueError(
                f"Anomaly maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must have the same shape, "
                "(N, H, W) or (N, 1, H, W). Resize the maps to the mask size before computing pixel AUROC."
            )
        maps, masks = squeezed_maps, squeezed_masks
    return maps, masks


def pixel_auroc(
    maps: torch.Tensor,
    masks: torch.Tensor,
    num_bins: int | None = None,
    score_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Pixel-level AUROC of anomaly maps against ground-truth masks, over all pixels of all images.

    Args:
        maps: raw anomaly maps ``(N, H, W)`` or ``(N, 1, H, W)``.
        masks: 0/1 masks of the same shape (a channel dimension of 1 may differ).
        num_bins: ``None`` for the exact AUROC (sorts every pixel: float64 memory ``~16·N·H·W`` bytes);
            an integer for the binned AUROC (histograms of ``num_bins`` bins). The binned value differs
            from the exact one by at most :func:`binned_auroc_error_bound` of its counts.
        score_range: ``(low, high)`` of the bins; default the maps' minimum and maximum. Scores outside it
            fall into the first/last bin.

    Example::

        >>> maps = torch.tensor([[[0.0, 9.0], [1.0, 2.0]]])
        >>> masks = torch.tensor([[[0, 1], [0, 1]]])
        >>> float(pixel_auroc(maps, masks)), float(pixel_auroc(maps, masks, num_bins=1000))
        (1.0, 1.0)
    """
    maps, masks = _match_maps(maps, masks)
    if num_bins is None:
        return rank_auroc(maps, masks)
    if score_range is None:
        score_range = (float(maps.min()), float(maps.max()))
    positive, negative = binned_auroc_counts(maps, masks, num_bins, score_range)
    return auroc_from_counts(positive, negative)


def binned_auroc_counts(
    scores: torch.Tensor, labels: torch.Tensor, num_bins: int, score_range: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Histograms ``(positive, negative)`` (int64, ``num_bins`` each) of scores by label, over ``score_range``.

    Sum them over batches (and ranks) to stream a pixel AUROC in ``O(num_bins)`` memory; the range
    must be the same for every batch (fix it before evaluating, e.g. from training statistics).

    Example::

        >>> pos, neg = binned_auroc_counts(torch.tensor([0.1, 0.9, 0.95]), torch.tensor([0, 1, 1]), 2, (0.0, 1.0))
        >>> pos.tolist(), neg.tolist()
        ([0, 2], [1, 0])
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be at least 1, got {num_bins}.")
    low, high = float(score_range[0]), float(score_range[1])
    if not high >= low:
        raise ValueError(f"score_range must be (low, high) with low <= high, got {score_range}.")
    scores = scores.detach().reshape(-1).to(torch.float64)
    positive = _check_binary(labels.detach(), "labels")
    if scores.numel() != positive.numel():
        raise ValueError(f"scores ({scores.numel()} values) and labels ({positive.numel()} values) differ in size.")
    if not torch.isfinite(scores).all():
        raise ValueError("scores hold NaN or infinite values; the AUROC is undefined. Clean or clip them first.")
    width = (high - low) / num_bins
    if width > 0:
        bins = ((scores - low) / width).floor().clamp_(0, num_bins - 1).long()
    else:
        bins = torch.zeros_like(scores, dtype=torch.long)
    counts = torch.zeros(2, num_bins, dtype=torch.long, device=scores.device)
    counts.index_put_((positive.long(), bins), torch.ones_like(bins), accumulate=True)
    return counts[1], counts[0]


def auroc_from_counts(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """AUROC of binned scores from per-bin counts of positives and negatives (ties within a bin count 1/2).

    Example::

        >>> float(auroc_from_counts(torch.tensor([0, 1, 3]), torch.tensor([2, 1, 0])))
        0.9583333333333334
    """
    positive = positive.to(torch.float64)
    negative = negative.to(torch.float64)
    num_pos, num_neg = positive.sum(), negative.sum()
    if num_pos == 0 or num_neg == 0:
        raise ValueError(
            f"The AUROC needs both normal and anomalous samples; got {int(num_pos)} anomalous and {int(num_neg)} "
            "normal."
        )
    negatives_below = negative.cumsum(0) - negative
    return (positive * (negatives_below + negative / 2)).sum() / (num_pos * num_neg)


def binned_auroc_error_bound(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Largest possible ``|binned AUROC - exact AUROC|``: half the share of (anomalous, normal) pairs sharing a bin.

    Example::

        >>> float(binned_auroc_error_bound(torch.tensor([0, 1, 3]), torch.tensor([2, 1, 0])))
        0.041666666666666664
    """
    positive = positive.to(torch.float64)
    negative = negative.to(torch.float64)
    return 0.5 * (positive * negative).sum() / (positive.sum() * negative.sum())
