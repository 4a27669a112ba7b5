"""MuSc (Li et al., ICLR 2024): zero-shot anomaly maps from the mutual scoring of unlabeled test images.

Every patch of a test image is scored by its distance to the nearest patch of each *other* test image: of those
``N - 1`` per-image nearest distances, the interval average keeps the sorted values between the ``lo`` and ``hi``
fractions (0 to 30 % in the paper: normal patches find close matches in most images, anomalous ones in few). LNAMD
first aggregates each layer's patch features over ``r x r`` neighbourhoods; maps of every layer and degree are
averaged. RsCIN then smooths each image score over the image's ``k`` most similar images (by a global feature).
Pure torch, no Lightning; what the official code (``xrli-U/MuSc``, ``models/modules/_MSM.py``, ``_LNAMD.py``,
``_RsCIN.py``, ``models/musc.py``) computes, up to the departures listed in ``docs/methods/musc.md``.

Example::

    >>> torch.manual_seed(0) and None
    >>> maps = [torch.randn(1, 8, 4, 4) + 0.1 * torch.randn(5, 8, 4, 4)]  # 5 similar images, one layer, 4x4 grid
    >>> maps[0][2, :, 1, 1] = torch.randn(8)  # one odd patch in image 2
    >>> scores = musc_anomaly_maps(maps, degrees=(1, 3))
    >>> scores.shape, int(scores.flatten(1).amax(1).argmax()), int(scores[2].flatten().argmax())
    (torch.Size([5, 4, 4]), 2, 5)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["interval_average", "lnamd_features", "musc_anomaly_maps", "mutual_scores", "rscin"]


def _interval_bounds(count: int, interval: tuple[float, float]) -> tuple[int, int]:
    """``[start, stop)`` of the sorted values the interval keeps: ``int(count * lo)`` to ``int(count * hi)`` as the
    official code truncates, widened to at least one value (the official code averages none, a NaN, below 4)."""
    lo, hi = interval
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"interval must be (lo, hi) with 0 <= lo < hi <= 1, got {interval!r}.")
    start = min(int(count * lo), count - 1)
    return start, max(int(count * hi), start + 1)


def interval_average(distances: torch.Tensor, interval: tuple[float, float] = (0.0, 0.3)) -> torch.Tensor:
    """Mean of the sorted last-dimension values from rank ``int(M * lo)`` to ``int(M * hi)`` (at least one value).

    Example::

        >>> interval_average(torch.tensor([[5.0, 1.0, 3.0, 2.0, 4.0]]), (0.0, 0.4))  # the two smallest
        tensor([1.5000])
    """
    start, stop = _interval_bounds(distances.shape[-1], interval)
    return torch.sort(distances, dim=-1).values[..., start:stop].mean(-1)


def mutual_scores(
    features: torch.Tensor,
    interval: tuple[float, float] = (0.0, 0.3),
    chunk_size: int = 1024,
    queries: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mutual scoring (MSM): each query patch's interval average of its nearest-patch distance to every other image.

    Args:
        features: ``(N, P, C)``: ``P`` patch features of each of the ``N >= 2`` test images.
        interval: ``(lo, hi)`` fractions of the ``N - 1`` sorted per-image distances averaged (paper: 0 to 0.3).
        chunk_size: query patches scored at once. Peak memory of the distances: ``chunk_size * N * P`` values
            (4 bytes each in float32), whatever the number of queries; the result does not depend on it.
        queries: positions in ``features`` of the images to score (default: all); each is compared with the
            ``N - 1`` others, so a rank of a multi-process run can score its own images against the whole set.

    Returns:
        ``(Q, P)`` scores, in the dtype of ``features``. Permuting the images permutes the rows and changes no value
        (distances are sorted before averaging; only float rounding of the distance kernel can differ).

    Example::

        >>> z = torch.tensor([[[0.0], [1.0]], [[0.0], [1.0]], [[0.0], [3.0]]])  # 3 images, 2 patches, 1 channel
        >>> mutual_scores(z, interval=(0.0, 0.5))  # the nearest of the 2 others' nearest distances
        tensor([[0., 0.],
                [0., 0.],
                [0., 2.]])
    """
    if features.dim() != 3 or features.shape[0] < 2:
        raise ValueError(f"mutual_scores needs features (N, P, C) of N >= 2 images, got {tuple(features.shape)}.")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"mutual_scores: chunk_size must be an int >= 1, got {chunk_size!r}.")
    num_images, num_patches, _ = features.shape
    _interval_bounds(num_images - 1, interval)
    chosen = torch.arange(num_images, device=features.device) if queries is None else queries.to(features.device)
    references = features.reshape(num_images * num_patches, -1)
    rows = features[chosen].reshape(-1, features.shape[-1])  # (Q * P, C), query image q's patches together
    owner = chosen.repeat_interleave(num_patches)  # each row's own image, left out of its comparison
    out = []
    for start in range(0, rows.shape[0], chunk_size):
        block = torch.cdist(rows[start : start + chunk_size], references)  # (c, N * P)
        nearest = block.view(block.shape[0], num_images, num_patches).amin(-1)  # (c, N): nearest patch per image
        nearest.scatter_(1, owner[start : start + chunk_size, None], math.inf)  # self last after the sort
        nearest = torch.sort(nearest, dim=1).values[:, : num_images - 1]
        out.append(interval_average(nearest, interval))
    return torch.cat(out).view(len(chosen), num_patches)


def lnamd_features(feature_maps: Sequence[torch.Tensor], degree: int) -> list[torch.Tensor]:
    """LNAMD: each layer's maps layer-normed, averaged over ``degree x degree`` neighbourhoods, on one grid.

    Each ``(N, C_l, h_l, w_l)`` map is normalized over ``(C, h, w)`` per image (a LayerNorm without weights, as the
    official code builds it), mean-pooled over the zero-padded ``degree x degree`` neighbourhood of each patch
    (what the official unfold + ``adaptive_avg_pool1d`` computes), resized bilinearly to the first layer's grid
    and L2-normalized per patch. ``degree`` 1 leaves the normalized features as they are.

    Returns:
        One ``(N, h_0 * w_0, C_l)`` tensor per layer (row-major patches).

    Example::

        >>> x = torch.randn(2, 4, 3, 3)
        >>> [tuple(z.shape) for z in lnamd_features([x, torch.randn(2, 6, 2, 2)], degree=3)]
        [(2, 9, 4), (2, 9, 6)]
        >>> expected = F.normalize(F.layer_norm(x, x.shape[1:]).flatten(2).transpose(1, 2), dim=-1)
        >>> torch.allclose(lnamd_features([x], degree=1)[0], expected)
        True
    """
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1 or degree % 2 == 0:
        raise ValueError(f"lnamd_features: degree must be an odd int >= 1 (a centred neighbourhood), got {degree!r}.")
    if not feature_maps or any(f.dim() != 4 for f in feature_maps):
        raise ValueError("lnamd_features needs at least one feature map, each (N, C, h, w).")
    grid = tuple(feature_maps[0].shape[-2:])
    out = []
    for maps in feature_maps:
        z = F.layer_norm(maps, maps.shape[1:])
        if degree > 1:
            z = F.avg_pool2d(z, degree, stride=1, padding=degree // 2, count_include_pad=True)
        if tuple(z.shape[-2:]) != grid:  # linear in the features: the same as resizing the official unfolded patches
            z = F.interpolate(z, size=grid, mode="bilinear", align_corners=False)
        out.append(F.normalize(z.flatten(2).transpose(1, 2), dim=-1))
    return out


def musc_anomaly_maps(
    feature_maps: Sequence[torch.Tensor],
    degrees: Sequence[int] = (1, 3, 5),
    interval: tuple[float, float] = (0.0, 0.3),
    chunk_size: int = 1024,
    queries: torch.Tensor | None = None,
) -> torch.Tensor:
    """MuSc's patch-level anomaly maps: :func:`mutual_scores` of :func:`lnamd_features`, averaged over layers and
    degrees (the official order: the mean over layers for each degree, then the mean over degrees).

    Args:
        feature_maps: one ``(N, C_l, h_l, w_l)`` map per layer for all ``N`` test images (the first sets the grid).
        degrees: the LNAMD aggregation degrees ``r`` (odd).
        interval, chunk_size, queries: as in :func:`mutual_scores`.

    Returns:
        ``(Q, h_0, w_0)`` maps for the queried images (all by default). Memory: the aggregated features of one
        degree, ``N * h_0 * w_0 * sum(C_l)`` values, plus the distances of one chunk.

    Example::

        >>> maps = musc_anomaly_maps([torch.randn(4, 3, 5, 5)], degrees=(1,), queries=torch.tensor([3]))
        >>> tuple(maps.shape)
        (1, 5, 5)
    """
    if not degrees:
        raise ValueError("musc_anomaly_maps needs at least one aggregation degree, e.g. (1, 3, 5).")
    grid = tuple(feature_maps[0].shape[-2:]) if feature_maps else ()
    total = None
    for degree in degrees:
        layers = lnamd_features(feature_maps, degree)
        per_layer = sum(mutual_scores(z, interval, chunk_size, queries) for z in layers) / len(layers)
        total = per_layer if total is None else total + per_layer
    return (total / len(degrees)).view(-1, *grid)


def rscin(scores: torch.Tensor, global_features: torch.Tensor, k: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
    """RsCIN: image scores min-max normalized, then averaged over each image's ``k`` most similar images.

    For each ``k``, row ``i`` of the similarity ``W = G G^T`` (``G``: the images' global features, L2-normalized by
    the caller) keeps its ``k`` largest entries (the image itself among them when ``G`` is normalized), the rest
    set to 0; the new score is ``sum_j W_ij s_j / sum_j W_ij`` over the kept ``j``. The results for every ``k`` are
    averaged (the official ``MMO``). ``k`` larger than the number of images keeps them all. An empty ``k`` or one
    holding 0 returns the scores unchanged, as the official code does.

    Example::

        >>> g = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])  # image 1 is nearer to 0 (0.8) than to 2 (0.6)
        >>> rscin(torch.tensor([0.0, 1.0, 2.0]), g, k=[2])  # (0, 0.5, 1) normalized; row 0: (0 * 1 + 0.5 * 0.8) / 1.8
        tensor([0.2222, 0.2778, 0.8125])
    """
    if scores.dim() != 1 or global_features.dim() != 2 or global_features.shape[0] != scores.shape[0]:
        raise ValueError(
            f"rscin takes scores (N,) and global features (N, D); got {tuple(scores.shape)} and "
            f"{tuple(global_features.shape)}."
        )
    if not k or 0 in k:
        return scores
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in k):
        raise ValueError(f"rscin: k must hold ints >= 1 (or 0 to switch RsCIN off), got {list(k)!r}.")
    span = scores.max() - scores.min()
    normalized = (scores - scores.min()) / torch.where(span > 0, span, torch.ones_like(span))
    similarity = global_features @ global_features.T
    out = torch.zeros_like(normalized)
    for keep in k:
        top = torch.topk(similarity, min(keep, len(scores)), dim=1)
        weights = torch.zeros_like(similarity).scatter_(1, top.indices, top.values)
        out = out + (weights @ normalized) / weights.sum(1)
    return out / len(k)
