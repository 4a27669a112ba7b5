"""Resampling errors for statistics that are not means: a Poisson bootstrap keyed by point, and half-sampling.

**Poisson bootstrap** (:func:`poisson_weights`): replicate ``b`` gives point ``i`` a weight drawn from
Poisson(1), the large-``N`` limit of the counts of a resampling with replacement. Each weight is a pure
function of ``(key, b, i)`` with ``i`` the point's *global* index (SplitMix64 of ``i`` in a stream keyed by
``(key, b)``, turned into a Poisson count by its inverse distribution function): a point gets the same weight
on whichever DDP rank, in whichever batch it is measured, and no features need to be gathered; weighted sums
then add up across batches and ranks. The standard error is the standard deviation of the statistic over the
replicates (:func:`replicate_standard_error`).

**Half-sampling** (:func:`half_sample_errors`): ``B`` subsets of ``m = ⌊N/2⌋`` distinct points, drawn
without replacement; the statistic is recomputed on each and its standard error is
``sd_b(T_b) · √(m / (N − m))``, the delete-``d`` jackknife (Shao & Wu 1989, ``d = N − m``). For a mean this is
unbiased for ``s²/N`` (the finite-population factor ``(N − m)/N`` of a subsample without replacement is what
the ``m/(N − m)`` undoes; the ``√(m/N)`` of ``m ≪ N`` subsampling would understate it by ``√2`` at
``m = N/2``). It suits statistics of a point cloud for which a duplicated point is not a sample (kernel
methods: a duplicate is a pair at distance 0).

Every draw comes from the key or the ``generator`` given, never from the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import torch

__all__ = ["derive_seed", "half_sample_errors", "poisson_weights", "replicate_standard_error"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment
_POISSON_CDF = np.cumsum([math.exp(-1.0) / math.factorial(k) for k in range(24)])  # P(X <= k), X ~ Poisson(1)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on a uint64 array (wrap-around arithmetic, no warnings on arrays)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that is a pure function of the integers ``keys`` (in order); distinct keys, unrelated seeds.

    Example::

        >>> derive_seed(0, 12, 1) == derive_seed(0, 12, 1), derive_seed(0, 12, 1) == derive_seed(0, 1, 12)
        (True, False)
        >>> 0 <= derive_seed(-5) < 2**63
        True
    """
    state = np.zeros(1, dtype=np.uint64)
    for key in keys:
        state = _mix(state + _GOLDEN + np.array([int(key) % 2**64], dtype=np.uint64))
    return int(state[0] >> np.uint64(1))


def poisson_weights(key: int, replicates: int, indices: torch.Tensor) -> torch.Tensor:
    """Poisson(1) bootstrap weights ``(replicates, n)`` (float64, CPU) of the points with global ``indices`` ``(n,)``.

    Weight ``[b, j]`` depends only on ``(key, b, indices[j])``: any split of the points into batches or ranks
    gives each point the same weights.

    Example::

        >>> w = poisson_weights(7, 3, torch.arange(10))
        >>> w.shape, bool((w == w.round()).all() and (w >= 0).all())
        (torch.Size([3, 10]), True)
        >>> torch.equal(poisson_weights(7, 3, torch.tensor([4, 9]))[:, 1], w[:, 9])  # keyed by the index
        True
        >>> big = poisson_weights(0, 1, torch.arange(100_000))
        >>> round(float(big.mean()), 2), round(float(big.var()), 2)  # Poisson(1): mean 1, variance 1
        (1.0, 1.0)
    """
    if replicates < 0:
        raise ValueError(f"replicates must be >= 0, got {replicates}.")
    index = indices.detach().cpu().reshape(-1).to(torch.int64).numpy()
    if index.size and int(index.min()) < 0:
        raise ValueError("indices must be the points' global indices, >= 0.")
    streams = np.array([derive_seed(key, b) for b in range(replicates)], dtype=np.uint64)[:, None]
    bits = _mix(streams + (index.astype(np.uint64)[None, :] + np.uint64(1)) * _GOLDEN)  # SplitMix64, position i
    uniform = (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return torch.from_numpy(np.searchsorted(_POISSON_CDF, uniform, side="right").astype(np.float64))


def replicate_standard_error(values: torch.Tensor) -> float:
    """The standard deviation (``ddof=1``) of a statistic over its replicates ``(B,)``; non-finite ones left out.

    NaN when fewer than two replicates are finite (e.g. a resample that kept one class of a classification
    metric that needs two).

    Example::

        >>> replicate_standard_error(torch.tensor([1.0, 2.0, 3.0, float("nan")]))
        1.0
        >>> replicate_standard_error(torch.tensor([1.0, float("nan")]))
        nan
    """
    finite = values[torch.isfinite(values)].to(torch.float64)
    return float(finite.std()) if finite.numel() >= 2 else math.nan


def half_sample_errors(
    statistic: Callable[[torch.Tensor], Mapping[str, float]],
    num_points: int,
    replicates: int,
    generator: torch.Generator,
) -> dict[str, float]:
    """Standard errors of ``statistic`` by half-sampling (the module docstring): one per key it returns.

    ``statistic(index)`` computes every value on the points ``index`` (sorted int64 positions, ``m = ⌊N/2⌋``
    of them); it may draw from ``generator`` too (the draws stay deterministic). ``replicates`` ≥ 2.

    Example::

        >>> x = torch.randn(400, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> errors = half_sample_errors(lambda i: {"mean": float(x[i].mean())}, 400, 200,
        ...                             torch.Generator().manual_seed(1))
        >>> round(errors["mean"] / float(x.std() / 20), 1)  # the closed form s / √N
        1.0
    """
    if replicates < 2:
        raise ValueError(f"A standard error needs at least 2 replicates, got {replicates}.")
    half = num_points // 2
    if half < 1:
        raise ValueError(f"Half-sampling needs at least 2 points, got {num_points}.")
    values: dict[str, list[float]] = {}
    for _ in range(replicates):
        index = torch.randperm(num_points, generator=generator)[:half].sort().values
        for name, value in statistic(index).items():
            values.setdefault(name, []).append(float(value))
    scale = math.sqrt(half / (num_points - half))
    return {name: replicate_standard_error(torch.tensor(v, dtype=torch.float64)) * scale for name, v in values.items()}
