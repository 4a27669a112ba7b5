"""Learning from aggregate responses: bag-level and instance-level losses and their interpolation.

Javanmard et al. (ICLR 2024) study training on bags ``a`` of instances ``x_i`` of which only the bag's aggregate
response ``ȳ_a`` is known (the mean label, or for label proportions the class-proportion vector). Two losses:

- bag level: ``L_bag = Σ_a w_a·ℓ(ȳ_a, f̄_a)`` with ``f̄_a`` the mean of the bag's predictions (for ``"ce"`` the mean
  of its predicted probabilities, DLLP-style), and
- instance level: ``L_ins = (1/n)·Σ_i ℓ(ȳ_{a(i)}, f(x_i))``, every instance regressed on its bag's response.

For squared loss ``L_ins = L̃_bag + R`` exactly, with ``L̃_bag`` the bag loss weighted by bag size (``w_a = n_a/n``)
and ``R = (1/n)·Σ_i (f(x_i) − f̄_{a(i)})²`` the spread of the predictions within their bags: the instance-level loss
is a regularised bag-level loss. The interpolating estimator trains on

- ``"mse"``: ``L_bag + ρ·R``;
- ``"ce"``:  ``(1 − ρ)·L_bag + ρ·L_ins``.

``bag_weights`` chooses ``w_a``: ``"uniform"`` (``1/m`` over the ``m`` bags of the batch, the paper's ``L_bag``) or
``"size"`` (``n_a/n``). With ``"size"``, or whenever all bags of the batch have one size (then the two coincide),
the ``"mse"`` loss equals ``(1 − ρ)·L_bag + ρ·L_ins`` exactly and ρ = 1 is the instance-level loss; with
``"uniform"`` and bags of different sizes, ``L_bag + R`` is not ``L_ins``. For ``"ce"`` the gap
``L_ins − L̃_bag ≥ 0`` is a Jensen gap (``−log`` of a mean probability is at most the mean of the ``−log``).
ρ ∈ [0, 1]: 0 is the bag-level loss, 1 the instance-level loss (the paper's exact parameterisation of ρ was not
checked against its body).

Batches are instance rows: ``preds`` ``(B,)`` (regression) or ``(B, C)`` (logits), ``bag_ids`` ``(B,)`` and
``bag_targets`` with one row per instance carrying its bag's response (checked equal within each bag). The losses
are over the bags present in the batch: a bag split across batches is two bags
(:class:`~lightning_regs.datamodules.bag_sampler.BagBatchSampler` keeps bags whole). Pure torch, vectorised.

Example::

    >>> import torch
    >>> preds = torch.tensor([1.0, 3.0, 0.0, 4.0])  # bag 7: mean 2; bag 9: mean 2
    >>> bag_ids = torch.tensor([7, 7, 9, 9])
    >>> targets = torch.tensor([2.0, 2.0, 1.0, 1.0])  # each row carries its bag's mean response
    >>> terms = aggregate_response_terms(preds, bag_ids, targets, rho=0.5)
    >>> terms.bag.item(), terms.regularizer.item(), terms.instance.item(), terms.loss.item()
    (0.5, 2.5, 3.0, 1.75)
"""

from __future__ import annotations

import math
import numbers
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "AggregateLossTerms",
    "aggregate_response_loss",
    "aggregate_response_terms",
    "bag_dispersion",
    "bag_level_loss",
    "bag_mean",
    "instance_level_loss",
]

LossName = Literal["mse", "ce"]
BagWeights = Literal["uniform", "size"]


class AggregateLossTerms(NamedTuple):
    """The interpolated objective and its parts, all scalars (see the module docstring).

    Attributes:
        loss: the training objective for the given ρ.
        bag: ``L_bag`` with the chosen ``bag_weights``.
        instance: ``L_ins``.
        regularizer: ``L_ins − L̃_bag`` (``L̃_bag`` weighted by bag size), ``≥ 0``: for ``"mse"`` the within-bag
            spread ``R = (1/n)·Σ_i (f(x_i) − f̄_{a(i)})²`` (computed directly), for ``"ce"`` the Jensen gap.
    """

    loss: torch.Tensor
    bag: torch.Tensor
    instance: torch.Tensor
    regularizer: torch.Tensor


def bag_mean(values: torch.Tensor, bag_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of ``values`` (``(B, ...)``) over each bag: ``(bag ids in increasing order, means (m, ...))``.

    Example::

        >>> ids, means = bag_mean(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([4, 2, 4]))
        >>> ids.tolist(), means.tolist()
        ([2, 4], [3.0, 3.0])
    """
    _check_bag_ids(bag_ids, values.shape[0] if values.dim() else -1)
    unique, inverse, counts = _groups(bag_ids.to(values.device))
    return unique, _group_mean(values, inverse, counts)


def aggregate_response_terms(
    preds: torch.Tensor,
    bag_ids: torch.Tensor,
    bag_targets: torch.Tensor,
    rho: float,
    loss: LossName = "mse",
    bag_weights: BagWeights = "uniform",
) -> AggregateLossTerms:
    """The interpolated aggregate-response objective and its bag-level, instance-level and regulariser parts.

    Args:
        preds: ``(B,)`` real-valued predictions (``"mse"``) or ``(B, C)`` logits (``"ce"``), one row per instance.
        bag_ids: ``(B,)`` integer bag of each row (any integers; rows of one bag need not be adjacent).
        bag_targets: ``(B,)`` (``"mse"``) or ``(B, C)`` class proportions (``"ce"``): every row its bag's response.
        rho: ρ ∈ [0, 1]; 0 the bag-level loss, 1 the instance-level loss.
        loss: ``"mse"`` (``L_bag + ρ·R``) or ``"ce"`` (``(1 − ρ)·L_bag + ρ·L_ins``, probabilities averaged per bag).
        bag_weights: ``"uniform"`` (each bag of the batch counts ``1/m``) or ``"size"`` (``n_a/n``).

    Raises:
        ValueError: for ρ outside [0, 1], an unknown ``loss`` or ``bag_weights``, shapes that do not match,
            non-integer bag ids, proportions that are negative or do not sum to 1, or rows of one bag that carry
            different responses (the message names the bag).

    Example::

        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
        >>> proportions = torch.tensor([[0.5, 0.5], [0.5, 0.5], [1.0, 0.0]])
        >>> terms = aggregate_response_terms(logits, torch.tensor([0, 0, 1]), proportions, rho=0.0, loss="ce")
        >>> round(terms.loss.item(), 4), bool(terms.regularizer > 0)  # both bags' mean probabilities: (0.5, 0.5)
        (0.6931, True)
    """
    rho = _check_rho(rho)
    if loss not in ("mse", "ce"):
        raise ValueError(
            f"Unknown loss {loss!r}: use 'mse' (regression on bag means) or 'ce' (label proportions, logits)."
        )
    if bag_weights not in ("uniform", "size"):
        raise ValueError(
            f"Unknown bag_weights {bag_weights!r}: use 'uniform' (every bag of the batch counts 1/m, the paper's "
            "L_bag) or 'size' (each bag counts n_a/n, so that ρ = 1 is the instance-level loss for any bag sizes)."
        )
    preds, bag_ids, bag_targets = _check_inputs(preds, bag_ids, bag_targets, loss)
    unique, inverse, counts = _groups(bag_ids)
    weights = counts.to(preds.dtype) / counts.sum() if bag_weights == "size" else None
    bag_response = _bag_response(bag_targets, inverse, counts, unique)
    if loss == "mse":
        bag_pred = _group_mean(preds, inverse, counts)
        per_bag = (bag_response - bag_pred).square()
        instance = (bag_response[inverse] - preds).square().mean()
        regularizer = (preds - bag_pred[inverse]).square().mean()
        bag = per_bag.mean() if weights is None else (weights * per_bag).sum()
        total = bag + rho * regularizer
    else:
        log_probs = F.log_softmax(preds, dim=-1)
        log_bag_probs = _group_log_mean_exp(log_probs, inverse, counts)
        per_bag = _cross_entropy(bag_response, log_bag_probs)
        per_row = _cross_entropy(bag_response[inverse], log_probs)
        instance = per_row.mean()
        regularizer = (per_row - per_bag[inverse]).mean()
        bag = per_bag.mean() if weights is None else (weights * per_bag).sum()
        total = (1.0 - rho) * bag + rho * instance
    return AggregateLossTerms(total, bag, instance, regularizer)


def aggregate_response_loss(
    preds: torch.Tensor,
    bag_ids: torch.Tensor,
    bag_targets: torch.Tensor,
    rho: float,
    loss: LossName = "mse",
    bag_weights: BagWeights = "uniform",
) -> torch.Tensor:
    """The interpolated aggregate-response loss: ``L_bag + ρ·R`` (``"mse"``) or ``(1 − ρ)·L_bag + ρ·L_ins`` (``"ce"``).

    Arguments and errors as :func:`aggregate_response_terms`, which also returns the parts.

    Example::

        >>> preds, bags = torch.tensor([1.0, 3.0, 0.0, 4.0]), torch.tensor([0, 0, 1, 1])
        >>> targets = torch.tensor([2.0, 2.0, 1.0, 1.0])
        >>> [aggregate_response_loss(preds, bags, targets, rho).item() for rho in (0.0, 1.0)]  # L_bag, L_ins
        [0.5, 3.0]
    """
    return aggregate_response_terms(preds, bag_ids, bag_targets, rho, loss, bag_weights).loss


def bag_level_loss(
    preds: torch.Tensor,
    bag_ids: torch.Tensor,
    bag_targets: torch.Tensor,
    loss: LossName = "mse",
    bag_weights: BagWeights = "uniform",
) -> torch.Tensor:
    """``L_bag = Σ_a w_a·ℓ(ȳ_a, f̄_a)``: each bag's response against its mean prediction (probability for ``"ce"``).

    Example::

        >>> bag_level_loss(torch.tensor([1.0, 3.0, 0.0]), torch.tensor([0, 0, 1]), torch.tensor([2.0, 2.0, 1.0]))
        tensor(0.5000)
    """
    return aggregate_response_terms(preds, bag_ids, bag_targets, 0.0, loss, bag_weights).bag


def instance_level_loss(
    preds: torch.Tensor, bag_ids: torch.Tensor, bag_targets: torch.Tensor, loss: LossName = "mse"
) -> torch.Tensor:
    """``L_ins = (1/n)·Σ_i ℓ(ȳ_{a(i)}, f(x_i))``: every instance against its bag's response.

    Example::

        >>> instance_level_loss(torch.tensor([1.0, 3.0, 0.0]), torch.tensor([0, 0, 1]), torch.tensor([2.0, 2.0, 1.0]))
        tensor(1.)
    """
    return aggregate_response_terms(preds, bag_ids, bag_targets, 1.0, loss).instance


def bag_dispersion(preds: torch.Tensor, bag_ids: torch.Tensor) -> torch.Tensor:
    """``R = (1/n)·Σ_i (f(x_i) − f̄_{a(i)})²``: the spread of ``(B,)`` predictions around their bag's mean.

    Example::

        >>> bag_dispersion(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 0, 1]))
        tensor(0.6667)
    """
    if preds.dim() != 1:
        raise ValueError(f"bag_dispersion takes (B,) real-valued predictions, got shape {tuple(preds.shape)}.")
    return aggregate_response_terms(preds, bag_ids, preds.detach().new_zeros(preds.shape), 0.0).regularizer


# internals ---------------------------------------------------------------------------------------------------------


def _check_rho(rho: float) -> float:
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real) or not math.isfinite(rho) or not 0 <= rho <= 1:
        raise ValueError(
            f"rho must be a number in [0, 1] (0: the bag-level loss, 1: the instance-level loss), got {rho!r}."
        )
    return float(rho)


def _check_bag_ids(bag_ids: torch.Tensor, rows: int) -> None:
    if (
        not isinstance(bag_ids, torch.Tensor)
        or bag_ids.dim() != 1
        or bag_ids.is_floating_point()
        or bag_ids.is_complex()
    ):
        got = f"{bag_ids.dtype} {tuple(bag_ids.shape)}" if isinstance(bag_ids, torch.Tensor) else type(bag_ids).__name__
        raise ValueError(
            f"bag_ids must be a (B,) integer tensor, one bag id per instance row (batch['bag_id']), got {got}."
        )
    if bag_ids.dtype == torch.bool:
        raise ValueError("bag_ids must be a (B,) integer tensor, got a bool tensor.")
    if bag_ids.shape[0] != rows:
        raise ValueError(f"bag_ids has {bag_ids.shape[0]} rows but the predictions have {rows}: one bag id per row.")
    if rows == 0:
        raise ValueError("The aggregate-response loss got an empty batch (no instance rows).")


def _check_inputs(
    preds: torch.Tensor, bag_ids: torch.Tensor, bag_targets: torch.Tensor, loss: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if loss == "mse" and preds.dim() != 1:
        hint = " (squeeze a (B, 1) output: preds.squeeze(-1))" if preds.dim() == 2 and preds.shape[1] == 1 else ""
        raise ValueError(
            f"loss='mse' takes (B,) real-valued predictions, got shape {tuple(preds.shape)}{hint}; for (B, C) "
            "logits of label proportions use loss='ce'."
        )
    if loss == "ce" and preds.dim() != 2:
        raise ValueError(
            f"loss='ce' takes (B, C) logits, got shape {tuple(preds.shape)}; for (B,) regression outputs, loss='mse'."
        )
    if not preds.is_floating_point():
        raise ValueError(f"preds must be floating point, got {preds.dtype}.")
    _check_bag_ids(bag_ids, preds.shape[0])
    if not isinstance(bag_targets, torch.Tensor) or bag_targets.shape != preds.shape:
        what = tuple(bag_targets.shape) if isinstance(bag_targets, torch.Tensor) else type(bag_targets).__name__
        expected = "(B,) bag mean responses" if loss == "mse" else "(B, C) class proportions of the row's bag"
        raise ValueError(
            f"bag_targets must have the predictions' shape {tuple(preds.shape)} ({expected}, one row per instance), "
            f"got {what}."
        )
    if not bag_targets.is_floating_point():
        raise ValueError(
            f"bag_targets must be floating point (a bag's mean response, or its class proportions), got "
            f"{bag_targets.dtype}; class ids of single instances are not aggregate responses."
        )
    dtype = torch.promote_types(preds.dtype, torch.float32)  # bf16/fp16 outputs: the loss in float32 at least
    preds = preds.to(dtype)
    bag_targets = bag_targets.to(device=preds.device, dtype=dtype)
    if loss == "ce":
        tolerance = 1e-4
        if bool((bag_targets < -tolerance).any()) or not torch.allclose(
            bag_targets.sum(dim=-1), torch.ones((), dtype=dtype, device=preds.device), atol=tolerance, rtol=0
        ):
            raise ValueError(
                "loss='ce' takes class proportions as bag_targets: non-negative rows that sum to 1 (each row the "
                f"share of each class in the row's bag); got rows summing to {bag_targets.sum(dim=-1)[:4].tolist()}..."
            )
    return preds, bag_ids.to(preds.device), bag_targets


def _groups(bag_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(unique ids, inverse (B,), counts (m,))`` of the bags present."""
    return torch.unique(bag_ids, sorted=True, return_inverse=True, return_counts=True)


def _group_mean(values: torch.Tensor, inverse: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    sums = values.new_zeros((counts.shape[0], *values.shape[1:])).index_add(0, inverse, values)
    return sums / counts.to(values.dtype).reshape(-1, *([1] * (values.dim() - 1)))


def _group_log_mean_exp(log_values: torch.Tensor, inverse: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``log(mean_{i∈a} exp(v_i))`` per bag and column, stable (the shift is each bag's column maximum)."""
    index = inverse[:, None].expand_as(log_values)
    shift = torch.full(
        (counts.shape[0], log_values.shape[1]), -torch.inf, dtype=log_values.dtype, device=log_values.device
    )
    shift = shift.scatter_reduce(0, index, log_values.detach(), reduce="amax", include_self=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    sums = torch.zeros_like(shift).index_add(0, inverse, (log_values - shift[inverse]).exp())
    return shift + sums.log() - counts.to(log_values.dtype).log()[:, None]


def _cross_entropy(proportions: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """``−Σ_c q_c·log p_c`` per row; classes with ``q_c = 0`` add nothing even where ``log p_c = −inf``."""
    terms = torch.where(proportions > 0, proportions * log_probs, torch.zeros_like(log_probs))
    return -terms.sum(dim=-1)


def _bag_response(
    bag_targets: torch.Tensor, inverse: torch.Tensor, counts: torch.Tensor, unique: torch.Tensor
) -> torch.Tensor:
    """Each bag's response (the mean of its rows' targets), after checking that its rows agree."""
    response = _group_mean(bag_targets, inverse, counts)
    deviation = (bag_targets - response[inverse]).abs()
    if deviation.dim() > 1:
        deviation = deviation.amax(dim=-1)
    scale = 1.0 + response.detach().abs().max()
    tolerance = max(1e-6, 100 * torch.finfo(bag_targets.dtype).eps) * scale
    if bool((deviation > tolerance).any()):
        row = int(deviation.argmax())
        bag = int(unique[inverse[row]])
        rows = (inverse == inverse[row]).nonzero().flatten()[:4].tolist()
        values = bag_targets[rows].tolist()
        raise ValueError(
            f"The rows of bag {bag} carry different targets ({values} in rows {rows}): every row of a bag must carry "
            "the bag's aggregate response (its mean label, or its class proportions), the same on each row. Give "
            "every instance its bag's response, not its own label, and one bag id per bag."
        )
    return response
