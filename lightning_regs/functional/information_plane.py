"""The information plane of a layer: I(X;T) and I(T;Y) from a probe set, by adaptive binning or a KDE upper bound.

A layer ``T`` of a trained network is a deterministic function of its input ``X``. On a probe of ``N`` distinct
inputs ``x_i`` (every point its own value of ``X``, each with probability ``1/N``) with class ids ``y_i``, each
estimator below returns an :class:`InformationPlanePoint` ``(ixt, ity)`` in **bits**:

- :func:`adaptive_binning` (Chelombiev et al., ICLR 2019): the activations are discretized into ``B`` bins whose
  edges sit at quantiles of the layer's distinct activation values, a point's code is the tuple of its units'
  bins, and the plug-in entropies of the codes give ``I(X;T) = H(T)`` (``T`` is a function of ``X``) and
  ``I(T;Y) = H(T) − Σ_y p(y) H(T | Y = y)``. ``I(X;T) ≤ log2 N``, with equality when every point has its own code.
- :func:`kde_upper` (Kolchinsky & Tracey's pairwise-distance bound, as Saxe et al. 2018 use it): Gaussian noise
  ``σ`` is added to ``T``, so ``T + σZ`` given ``X = x_i`` is ``N(t_i, σ²I)`` and ``T + σZ`` is the mixture of
  those ``N`` Gaussians, whose entropy is bounded by :func:`kde_entropy_upper`. ``I(X;T)`` is that bound minus the
  noise entropy, at most ``log2 N``; ``I(T;Y)`` is the difference of the bounds over all points and within
  each class (a difference of bounds, not itself a bound).

The probability of a class, ``p(y)``, is its share of the probe. The third estimator, with noise relative to
the layer's scale, PCA and a k-nearest-neighbour entropy, is in
:mod:`lightning_regs.functional.information_plane_knn`.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch

__all__ = [
    "InformationPlanePoint",
    "adaptive_bin_codes",
    "adaptive_binning",
    "class_indices",
    "kde_entropy_upper",
    "kde_upper",
    "probe_points",
]

Activation = Literal["relu", "tanh"] | None
TANH_LOWEST_EDGE = -1.000001  # below tanh's range, so a saturated −1 falls inside the first bin


class InformationPlanePoint(NamedTuple):
    """One layer's coordinates in the information plane, in bits."""

    ixt: float  # I(X; T)
    ity: float  # I(T; Y)


def probe_points(t: torch.Tensor, name: str = "t") -> torch.Tensor:
    """``t`` as ``(N, d)`` float64 rows (flattened per point), checked to be finite with at least one point.

    Example::

        >>> probe_points(torch.zeros(3, 2, 2)).shape
        torch.Size([3, 4])
    """
    if t.dim() < 1 or t.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one point (a tensor (N, ...)), got shape {tuple(t.shape)}.")
    points = t.detach().reshape(t.shape[0], -1).to(torch.float64)
    if points.shape[1] < 1:
        raise ValueError(f"{name} has no features per point: shape {tuple(t.shape)}.")
    if not bool(torch.isfinite(points).all()):
        raise ValueError(f"{name} holds non-finite values: the information plane needs finite activations.")
    return points


def class_indices(labels: torch.Tensor, num_points: int) -> list[torch.Tensor]:
    """The positions of each class's points (classes in increasing order), checking ``labels`` are ``N`` class ids.

    Example::

        >>> [i.tolist() for i in class_indices(torch.tensor([2, 0, 2]), 3)]
        [[1], [0, 2]]
    """
    if labels.dim() != 1 or labels.is_floating_point() or labels.shape[0] != num_points:
        raise ValueError(
            f"labels must be integer class ids, one per point (shape ({num_points},)); got {labels.dtype} of shape "
            f"{tuple(labels.shape)}."
        )
    labels = labels.detach().cpu()
    return [torch.nonzero(labels == value).flatten() for value in torch.unique(labels)]


def _entropy_of_ids(ids: torch.Tensor) -> float:
    """Plug-in entropy (bits) of the empirical distribution of the integer ``ids``."""
    p = torch.unique(ids, return_counts=True)[1].to(torch.float64) / ids.numel()
    return float(-(p * torch.log2(p)).sum()) + 0.0  # + 0.0: one code gives 0.0, not −0.0


def _quantiles(sorted_values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Linear-interpolation quantiles of a sorted 1-D tensor (``torch.quantile`` refuses more than 2**24 values)."""
    position = levels * (sorted_values.numel() - 1)
    low = position.floor().long()
    high = torch.clamp(low + 1, max=sorted_values.numel() - 1)
    weight = position - low
    return sorted_values[low] * (1 - weight) + sorted_values[high] * weight


def adaptive_bin_codes(t: torch.Tensor, num_bins: int = 30, activation: Activation = None) -> torch.Tensor:
    """Each point's code: the ``(N, d)`` int64 bin index of every unit, with adaptive edges shared by the layer.

    The edges ``e_0 < ... < e_B`` span ``[e_0, max]``: ``e_0`` is 0 for ``activation="relu"`` (the values must be
    ``≥ 0``), −1.000001 for ``"tanh"`` (values in ``[−1, 1]``), else the smallest value; ``e_1 ... e_B`` are the
    quantiles ``k/B`` of the layer's *distinct* values together with ``e_0`` (pooled over units and points), so
    each bin holds about as many distinct values. A value ``v`` falls in bin ``k`` when ``e_k ≤ v < e_{k+1}``
    (the largest value in the last bin).

    Example::

        >>> adaptive_bin_codes(torch.tensor([[0.0], [1.0], [2.0], [3.0]]), num_bins=2, activation="relu").flatten()
        tensor([0, 0, 1, 1])
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int, got {num_bins!r}.")
    points = probe_points(t)
    if activation == "relu":
        lowest = 0.0
    elif activation == "tanh":
        lowest = TANH_LOWEST_EDGE
    elif activation is None:
        lowest = float(points.min())
    else:
        raise ValueError(f"activation must be 'relu', 'tanh' or None (the smallest value), got {activation!r}.")
    if float(points.min()) < lowest or (activation == "tanh" and float(points.max()) > -TANH_LOWEST_EDGE):
        bounds = "≥ 0" if activation == "relu" else "in [−1, 1]"
        raise ValueError(
            f"activation={activation!r} bins values {bounds}, and this layer's lie in [{float(points.min()):.4g}, "
            f"{float(points.max()):.4g}]: pass activation=None (the lowest edge at the smallest value)."
        )
    distinct = torch.unique(torch.cat([points.flatten(), points.new_tensor([lowest])]))  # sorted
    levels = torch.arange(1, num_bins, dtype=torch.float64) / num_bins
    inner = _quantiles(distinct, levels)  # e_1 ... e_{B-1}
    return torch.bucketize(points, inner, right=True)


def adaptive_binning(
    t: torch.Tensor, labels: torch.Tensor, num_bins: int = 30, activation: Activation = None
) -> InformationPlanePoint:
    """``I(X;T)`` and ``I(T;Y)`` in bits by adaptive binning (Chelombiev et al. 2019), on a probe of distinct inputs.

    Assumptions: ``T`` is a deterministic function of ``X`` and the ``N`` probe inputs are distinct and equally
    likely, so ``I(X;T) = H(T)``; the binned codes stand for ``T``; the entropies are plug-in (no bias correction).
    ``I(X;T) = H(codes) ≤ log2 N`` (saturated when every point has its own code, which a wide layer reaches
    easily) and ``I(T;Y) = H(codes) − Σ_y p(y) H(codes | y) ≤ H(Y) ≤ log2 K``. The edges: :func:`adaptive_bin_codes`.

    Example::

        >>> injective = adaptive_binning(torch.eye(8), torch.arange(8) % 2)  # one-hot rows: 8 distinct codes
        >>> injective.ixt, injective.ity
        (3.0, 1.0)
        >>> adaptive_binning(torch.zeros(8, 3), torch.arange(8) % 2, activation="relu")
        InformationPlanePoint(ixt=0.0, ity=0.0)
    """
    codes = adaptive_bin_codes(t, num_bins, activation)
    ids = torch.unique(codes, dim=0, return_inverse=True)[1]
    total = _entropy_of_ids(ids)
    conditional = sum(idx.numel() / ids.numel() * _entropy_of_ids(ids[idx]) for idx in class_indices(labels, len(ids)))
    return InformationPlanePoint(total, total - conditional)


def _squared_distances(points: torch.Tensor) -> torch.Tensor:
    """``‖p_i − p_j‖²`` (float64, ``(N, N)``), by the Gram matrix (``N × N × d`` differences would not fit)."""
    norms = (points * points).sum(1)
    squared = (norms[:, None] + norms[None, :] - 2.0 * points @ points.T).clamp_min_(0.0)
    return squared.fill_diagonal_(0.0)


def _pairwise_term(squared: torch.Tensor, sigma: float) -> float:
    """``−(1/N) Σ_i log((1/N) Σ_j exp(−D_ij / 2σ²))`` in nats: the bound's part above the noise entropy."""
    n = squared.shape[0]
    return float(-(torch.logsumexp(-squared / (2.0 * sigma**2), dim=1) - math.log(n)).mean())


def _check_sigma(sigma: float) -> float:
    if isinstance(sigma, bool) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma (the noise's standard deviation) must be a positive number, got {sigma!r}.")
    return float(sigma)


def kde_entropy_upper(t: torch.Tensor, sigma: float = 0.01) -> float:
    """Kolchinsky & Tracey's upper bound (bits) on the entropy of ``T + σZ``, the mixture ``(1/N) Σ_i N(t_i, σ²I)``.

    ``H ≤ −(1/N) Σ_i log((1/N) Σ_j exp(−‖t_i − t_j‖² / 2σ²)) + (d/2) log(2πeσ²)`` (the pairwise bound with the KL
    divergence between the components, ``‖t_i − t_j‖² / 2σ²``; ``d`` features per point), divided by ``ln 2``.

    Example::

        >>> far = torch.tensor([[0.0], [1.0]])  # two components 100 σ apart: one bit above the noise entropy
        >>> round(kde_entropy_upper(far) - 0.5 * math.log2(2 * math.pi * math.e * 0.01**2), 6)
        1.0
    """
    sigma = _check_sigma(sigma)
    points = probe_points(t)
    noise = 0.5 * points.shape[1] * math.log(2 * math.pi * math.e * sigma**2)
    return (_pairwise_term(_squared_distances(points), sigma) + noise) / math.log(2)


def kde_upper(t: torch.Tensor, labels: torch.Tensor, sigma: float = 0.01) -> InformationPlanePoint:
    """``I(X;T)`` and ``I(T;Y)`` in bits of the noisy layer ``T + σZ`` by the pairwise KDE upper bound.

    Assumptions: the probe inputs are distinct and equally likely; ``T`` is deterministic given ``X`` and the
    Gaussian noise ``σZ`` (absolute, in the layer's units: σ = 0.01 means something else for a layer ten times
    larger) is what makes the information finite. ``I(X;T) = H_upper(T) − (d/2) log(2πeσ²)``, at most ``log2 N``
    (reached when the points are many ``σ`` apart). ``I(T;Y) = H_upper(T) − Σ_y p(y) H_upper(T | Y = y)``, the
    class-wise bound over that class's points; it is at most ``H(Y) ≤ log2 K``.

    Example::

        >>> t = torch.tensor([[0.0], [0.0], [5.0], [5.0]])  # two pairs, each pair one point, far apart
        >>> kde_upper(t, torch.tensor([0, 0, 1, 1]))
        InformationPlanePoint(ixt=1.0, ity=1.0)
    """
    sigma = _check_sigma(sigma)
    points = probe_points(t)
    squared = _squared_distances(points)
    total = _pairwise_term(squared, sigma)
    groups = class_indices(labels, points.shape[0])
    n = points.shape[0]
    conditional = sum(idx.numel() / n * _pairwise_term(squared[idx][:, idx], sigma) for idx in groups)
    return InformationPlanePoint(total / math.log(2), (total - conditional) / math.log(2))
