"""Average precision, F1-max and AUPRO of RAW anomaly scores, in float64: the rest of the field's metric suite.

Beside the AUROC (:mod:`lightning_regs.functional.anomaly`), anomaly detection papers report, at image and pixel
level, the average precision (AP), the best F1 over all thresholds (F1-max, anomalib's ``F1Max``) and, at pixel
level, the area under the per-region-overlap curve up to a false positive rate of 0.3 (AUPRO, the MVTec AD
evaluation's). Scores are raw (no sigmoid: only their order matters); a pixel or image counts as predicted
anomalous at threshold ``t`` when its score is ``>= t``, and every distinct score is a threshold.

* :func:`average_precision` is step-wise, ``sum_k (R_k - R_{k-1}) P_k`` over the thresholds in decreasing order
  (no interpolation), exactly ``sklearn.metrics.average_precision_score``, ties included.
* :func:`f1_max` is ``max_t 2 TP / (2 TP + FP + FN)`` and the (smallest) threshold reaching it.
* :func:`aupro` follows the official MVTec AD evaluation (``compute_pro`` and ``trapezoid``): every connected
  component of every ground-truth mask (8-connectivity, ``scipy.ndimage.label`` with a 3x3 block of ones, never
  across images) is one region; PRO(t) is the mean over all regions of all images of the share of the region's
  pixels scoring ``>= t``; FPR(t) is the share of all normal pixels (those of anomalous images included) scoring
  ``>= t``. The curve from (0, 0) through one point per distinct score to (1, 1) is integrated by the trapezoid
  rule up to ``fpr_limit`` (the curve interpolated linearly at the limit) and divided by ``fpr_limit``: the value
  lies in [0, 1] (anomalib up to v2.2 divided by the last FPR reached instead and could exceed 1: anomalib#1651,
  #3718). Defect-free images add normal pixels only. Unlike the official code, FPRs are kept in float64.

Example::

    >>> import torch
    >>> scores, labels = torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])
    >>> round(float(average_precision(scores, labels)), 4), [round(float(v), 2) for v in f1_max(scores, labels)]
    (0.8333, [0.8, 0.35])
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage

from lightning_regs.functional._checks import check_number
from lightning_regs.functional.anomaly import _check_binary, _match_maps

__all__ = ["F1Max", "aupro", "average_precision", "f1_max", "pixel_average_precision", "pixel_f1_max", "pro_curve"]


class F1Max(NamedTuple):
    """The best F1 over all thresholds (``value``) and the smallest threshold reaching it, float64 scalars."""

    value: torch.Tensor
    threshold: torch.Tensor


def _scores_and_labels(scores: torch.Tensor, labels: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    scores = scores.detach().reshape(-1)
    if scores.numel() != labels.numel():
        raise ValueError(f"scores ({scores.numel()} values) and labels ({labels.numel()} values) differ in size.")
    positive = _check_binary(labels.detach(), "labels").to(scores.device)
    if not torch.isfinite(scores).all():
        raise ValueError(f"scores hold NaN or infinite values; the {metric} is undefined. Clean or clip them first.")
    if not positive.any():
        raise ValueError(
            f"The {metric} needs at least one anomalous sample (label 1); got none among {positive.numel()}. "
            "Evaluate on a set holding anomalies (e.g. the MVTec AD test split)."
        )
    # floating scores are sorted as they are (float32 -> float64 keeps order and ties), others in float64
    return (scores if scores.is_floating_point() else scores.to(torch.float64)), positive


def _sorted_groups(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sorted_scores, order, ends)``: scores in decreasing order and the last position of each tie group."""
    sorted_scores, order = torch.sort(scores, descending=True)
    last = torch.ones_like(sorted_scores, dtype=torch.bool)
    torch.ne(sorted_scores[1:], sorted_scores[:-1], out=last[:-1])
    return sorted_scores, order, last.nonzero().squeeze(1)


def _counts_per_threshold(
    scores: torch.Tensor, positive: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(thresholds, tp, fp)``: each distinct score in decreasing order (float64), the counts scoring ``>=`` it."""
    sorted_scores, order, ends = _sorted_groups(scores)
    true_positives = torch.cumsum(positive[order], 0, dtype=torch.int64)[ends]
    return sorted_scores[ends].to(torch.float64), true_positives, ends + 1 - true_positives


def _ap_and_f1_max(scores: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, F1Max]:
    """Both metrics from one sort (``scores`` and ``positive`` checked by :func:`_scores_and_labels`)."""
    thresholds, true_positives, false_positives = _counts_per_threshold(scores, positive)
    num_positive = int(positive.sum())
    predicted = false_positives.add_(true_positives)  # TP + FP, in place: one threshold per distinct score
    tp = true_positives.to(torch.float64)
    del true_positives
    new_positives = torch.diff(tp, prepend=tp.new_zeros(1))  # recall gain times the number of positives
    ap = new_positives.mul_(tp).div_(predicted).sum() / num_positive  # sum (R_k - R_k-1) P_k
    del new_positives
    f1 = tp.mul_(2).div_(predicted.add_(num_positive))  # 2 TP / (TP + FP + TP + FN)
    last_best = f1.numel() - 1 - int(torch.argmax(f1.flip(0)))  # thresholds decrease: the last maximum is the smallest
    return ap, F1Max(f1[last_best], thresholds[last_best])


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Step-wise average precision ``sum_k (R_k - R_{k-1}) P_k`` of raw ``scores`` for 0/1 ``labels``.

    Exactly ``sklearn.metrics.average_precision_score`` (tied scores form one threshold), in float64.

    Args:
        scores: real-valued scores of any shape (higher means more anomalous); flattened.
        labels: 0/1 (or bool) of the same number of elements.

    Raises:
        ValueError: on a size mismatch, non-finite scores, labels outside {0, 1}, or no anomalous sample (without
            normal samples the AP is 1).

    Example::

        >>> float(average_precision(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1, 0, 1])))
        0.8333333333333333
    """
    return _ap_and_f1_max(*_scores_and_labels(scores, labels, "average precision"))[0]


def f1_max(scores: torch.Tensor, labels: torch.Tensor) -> F1Max:
    """The best F1 score over all thresholds of raw ``scores`` (anomalib's ``F1Max``), with its threshold.

    F1(t) = 2 TP / (2 TP + FP + FN) when scores ``>= t`` are predicted anomalous, for every distinct score ``t``;
    of several thresholds reaching the maximum the smallest is returned (as anomalib, which takes the first
    maximum of the ascending precision-recall curve).

    Raises:
        ValueError: as :func:`average_precision`.

    Example::

        >>> best = f1_max(torch.tensor([-2.0, 5.0, 1.0, 9.0]), torch.tensor([0, 1, 0, 1]))
        >>> float(best.value), float(best.threshold)
        (1.0, 5.0)
    """
    return _ap_and_f1_max(*_scores_and_labels(scores, labels, "F1-max"))[1]


def _maps_and_masks(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, H, W)`` maps and bool masks from ``(N, H, W)`` or ``(N, 1, H, W)`` inputs."""
    maps, masks = _match_maps(maps.detach(), masks.detach())
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps, masks = maps[:, 0], masks[:, 0]
    if maps.dim() != 3:
        raise ValueError(
            f"Anomaly maps and masks must be (N, H, W) or (N, 1, H, W); got {tuple(maps.shape)}. Add the image "
            "dimension to a single map (map[None])."
        )
    return maps, _check_binary(masks, "masks").reshape(masks.shape)


def pixel_average_precision(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """:func:`average_precision` over all pixels of anomaly ``maps`` against 0/1 ``masks`` (shapes as :func:`aupro`).

    Example::

        >>> float(pixel_average_precision(torch.tensor([[[0.0, 9.0], [1.0, 2.0]]]), torch.tensor([[[0, 1], [0, 0]]])))
        1.0
    """
    maps, masks = _maps_and_masks(maps, masks)
    return average_precision(maps, masks)


def pixel_f1_max(maps: torch.Tensor, masks: torch.Tensor) -> F1Max:
    """:func:`f1_max` over all pixels of anomaly ``maps`` against 0/1 ``masks`` (shapes as :func:`aupro`).

    Example::

        >>> float(pixel_f1_max(torch.tensor([[[0.0, 9.0], [1.0, 2.0]]]), torch.tensor([[[0, 1], [0, 1]]])).value)
        1.0
    """
    maps, masks = _maps_and_masks(maps, masks)
    return f1_max(maps, masks)


def pro_curve(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-region-overlap curve ``(fpr, pro)`` of the MVTec AD evaluation, float64, FPR non-decreasing.

    One point per distinct score ``t`` (in decreasing order), preceded by (0, 0); the last point is (1, 1).
    Regions are the 8-connected components of each image's mask; see the module docstring.

    Args:
        maps: raw anomaly maps ``(N, H, W)`` or ``(N, 1, H, W)``.
        masks: 0/1 ground-truth masks of the same shape (a channel dimension of 1 may differ).

    Raises:
        ValueError: on a shape mismatch, non-finite maps, masks outside {0, 1}, no anomalous pixel or no normal pixel.

    Example::

        >>> fpr, pro = pro_curve(torch.tensor([[[0.0, 9.0], [1.0, 2.0]]]), torch.tensor([[[0, 1], [0, 0]]]))
        >>> fpr.tolist(), pro.tolist()
        ([0.0, 0.0, 0.3333333333333333, 0.6666666666666666, 1.0], [0.0, 1.0, 1.0, 1.0, 1.0])
    """
    maps, masks = _maps_and_masks(maps, masks)
    if not torch.isfinite(maps).all():
        raise ValueError("Anomaly maps hold NaN or infinite values; the PRO curve is undefined. Clean or clip them.")
    structure = np.zeros((3, 3, 3), dtype=int)
    structure[1] = 1  # a 3x3 block of ones within each image: 8-connectivity, no region spans two images
    components, num_regions = ndimage.label(masks.cpu().numpy(), structure=structure)
    region = torch.from_numpy(components).reshape(-1)  # int32: 0 normal, 1..num_regions the regions
    sizes = torch.bincount(region, minlength=num_regions + 1)
    if num_regions == 0:
        raise ValueError("The PRO curve needs at least one anomalous pixel in the masks; they are all 0 (normal).")
    if int(sizes[0]) == 0:
        raise ValueError("The PRO curve needs normal pixels (mask 0) for its false positive rate; every pixel is 1.")
    scores = maps.reshape(-1).cpu()
    _, order, ends = _sorted_groups(scores if scores.is_floating_point() else scores.to(torch.float64))
    region = region[order]  # in decreasing score order; ends: the last pixel of each tie group
    del order
    fpr = torch.cumsum(region == 0, 0, dtype=torch.int64)[ends].to(torch.float64) / int(sizes[0])
    # each region adds 1/num_regions once all its pixels score above the threshold, 1/(size * num_regions) per pixel
    pro_step = 1.0 / (sizes.to(torch.float64) * num_regions)
    pro_step[0] = 0.0
    pro = torch.cumsum(pro_step[region], 0)[ends].clamp_(max=1.0)
    pro[-1] = 1.0  # every pixel scores >= the smallest score (the cumulative sum may round a few ulp below)
    zero = torch.zeros(1, dtype=torch.float64)
    return torch.cat([zero, fpr]), torch.cat([zero, pro])


def _area_up_to(fpr: torch.Tensor, pro: torch.Tensor, limit: float) -> torch.Tensor:
    """Trapezoid area under ``(fpr, pro)`` for FPR in [0, limit], the curve interpolated linearly at the limit."""
    inside = int((fpr <= limit).sum())  # fpr is non-decreasing, starts at 0 and ends at 1 >= limit
    area = torch.trapezoid(pro[:inside], fpr[:inside])
    if inside < fpr.numel():  # the limit lies strictly between two points: add the interpolated strip
        x0, x1, y0, y1 = fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]
        at_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area = area + 0.5 * (y0 + at_limit) * (limit - x0)
    return area


def aupro(maps: torch.Tensor, masks: torch.Tensor, fpr_limit: float = 0.3) -> torch.Tensor:
    """Area under the PRO curve up to ``fpr_limit``, divided by ``fpr_limit`` (MVTec AD's AU-PRO), in [0, 1].

    A map scoring every anomalous pixel above every normal one gives 1; one scoring every normal pixel above
    every anomalous one gives 0. Memory: about 50 bytes per pixel of all maps together besides the inputs (sort
    order, region ids, cumulative sums; measured 47 B/pixel on 100 maps of 256x256).

    Args:
        maps: raw anomaly maps ``(N, H, W)`` or ``(N, 1, H, W)``; all images of the set at once (regions and the
            FPR are counted over the whole set).
        masks: 0/1 ground-truth masks of the same shape (a channel dimension of 1 may differ); all zeros for
            defect-free images.
        fpr_limit: the integration limit, in (0, 1]; 0.3 in the MVTec AD papers.

    Raises:
        ValueError: as :func:`pro_curve`, or ``fpr_limit`` outside (0, 1].

    Example::

        >>> maps = torch.tensor([[[0.0, 9.0], [1.0, 2.0]]])
        >>> float(aupro(maps, torch.tensor([[[0, 1], [0, 0]]]))), float(aupro(-maps, torch.tensor([[[0, 1], [0, 0]]])))
        (1.0, 0.0)
    """
    limit = check_number("aupro", "fpr_limit", fpr_limit, low=0.0, high=1.0, low_open=True)
    fpr, pro = pro_curve(maps, masks)
    return (_area_up_to(fpr, pro, limit) / limit).clamp(0.0, 1.0)
