"""The standard error of a mean over points, from sums that add up across batches and DDP ranks."""

from __future__ import annotations

import torch

__all__ = ["mean_and_standard_error"]


def mean_and_standard_error(
    total: torch.Tensor, total_of_squares: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and its standard error ``s / √N`` (``s``: the sample standard deviation, ``N − 1`` in its denominator).

    ``total`` and ``total_of_squares`` are ``Σ xᵢ`` and ``Σ xᵢ²`` over the ``count`` points (elementwise for
    several quantities), so they may be summed over batches and all-reduced over ranks first: the result
    then equals the single-process one. Computed in float64; fewer than 2 points give a NaN error.

    Example::

        >>> x = torch.tensor([1.0, 2.0, 3.0, 4.0])
        >>> mean, se = mean_and_standard_error(x.sum(), x.pow(2).sum(), 4)
        >>> float(mean), round(float(se), 6), round(float(x.std() / 2), 6)
        (2.5, 0.645497, 0.645497)
    """
    if count < 1:
        raise ValueError(f"The standard error needs at least one point, got count={count}.")
    total, total_of_squares = total.to(torch.float64), total_of_squares.to(torch.float64)
    mean = total / count
    if count < 2:
        return mean, torch.full_like(mean, float("nan"))
    variance = (total_of_squares - count * mean.pow(2)).clamp_min(0.0) / (count - 1)
    return mean, (variance / count).sqrt()
