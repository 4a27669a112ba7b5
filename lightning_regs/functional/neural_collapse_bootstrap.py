"""Bootstrap standard errors of the neural collapse metrics, streamed in the accumulator's two passes.

Replicate ``b`` weighs point ``i`` by a Poisson(1) count keyed by ``(seed, b, i)``, ``i`` the point's global
index (:func:`~lightning_regs.functional.bootstrap.poisson_weights`), and recomputes every metric of
:class:`~lightning_regs.functional.neural_collapse.NeuralCollapseAccumulator` on the weighted points: replicate
``b`` equals ``neural_collapse(features, labels, W, b, sample_weight=w_b)`` (tested). The standard error of a
metric is its standard deviation over the ``B`` replicates. A point's weights do not depend on the batch or the
rank it is measured on, and the sums add up across both, so under ``torch.distributed`` no features are gathered
and every rank gets the single-process errors.

The replicates share the features of one forward and never hold a ``d × d`` matrix: the first pass sums, per
replicate, the class weights and weighted feature sums (``B × K × d``); the second pass (the one NC4 needs)
adds, against each replicate's final class means, the class scatters, the NC4 counts and the scatter along the
replicate's top ``min(K−1, d)`` between-class directions, which is all Papyan's NC1 needs of ``Σ_W``
(``tr(Σ_W Σ_B^†)/K = Σ_j v_jᵀ Σ_W v_j / s_j²``). Memory ``O(B·K·d)``; work per point ``O(B·d·K)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from lightning_regs.functional.bootstrap import poisson_weights, replicate_standard_error
from lightning_regs.functional.neural_collapse import (
    _cdnv,
    _equinorm_equiangle,
    _etf_distance,
    checked_batch,
)

__all__ = ["NeuralCollapseBootstrap"]

_FLOAT = torch.float64


class NeuralCollapseBootstrap:
    """Poisson-bootstrap replicates of the neural collapse metrics and their standard errors.

    Use as the accumulator, with each batch's global point ``indices``: :meth:`update` with every batch;
    :meth:`sync` (every rank, also on one process: it fixes the replicates' class means); :meth:`update_ncc`
    with every batch again; :meth:`sync` once more; then :meth:`standard_errors` (or :meth:`compute`, the
    replicates' values).

    Args:
        num_classes: ``K``.
        replicates: ``B`` (at least 2).
        seed: the key of the weights: the same seed and points give the same replicates.

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> labels = torch.arange(3).repeat(40)
        >>> features = 4.0 * torch.eye(3, 5)[labels] + torch.randn(120, 5, generator=g)
        >>> bootstrap = NeuralCollapseBootstrap(num_classes=3, replicates=20, seed=1)
        >>> for chunk in torch.arange(120).split(50):  # any batches; each point's global index with it
        ...     bootstrap.update(features[chunk], labels[chunk], chunk)
        >>> _ = bootstrap.sync()
        >>> bootstrap.update_ncc(features, labels, torch.arange(120), weight=torch.eye(3, 5))
        >>> errors = bootstrap.sync().standard_errors(weight=torch.eye(3, 5))
        >>> sorted(errors)[:3], 0 < errors["nc1"] < 0.1
        (['accuracy', 'cdnv', 'nc1'], True)
    """

    def __init__(self, num_classes: int, replicates: int = 20, seed: int = 0) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
        if replicates < 2:
            raise ValueError(f"A standard error needs at least 2 bootstrap replicates, got {replicates}.")
        self.num_classes, self.replicates, self.seed = int(num_classes), int(replicates), int(seed)
        self.counts: torch.Tensor | None = None  # (B, K) weight per class
        self.sums: torch.Tensor | None = None  # (B, K, d) weighted feature sums
        self.means: torch.Tensor | None = None  # (B, K, d), after the first sync
        self.singular: list[torch.Tensor | None] = []  # per replicate: the top min(K−1, d) singular values of M̄
        self.basis: torch.Tensor | None = None  # (B, K, d): their right singular vectors, zero rows after them
        self.second: torch.Tensor | None = None  # (B, 2K + 3): class scatters, scatter along V, NC4 counts
        self.stage = 0  # 0: first pass; 1: class means final (second pass); 2: second pass summed over ranks

    # -- first pass --------------------------------------------------------------------------------
    def update(self, features: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        """Add a batch: ``features`` ``(n, d)``, ``labels`` ``(n,)``, the points' global ``indices`` ``(n,)``."""
        if self.stage != 0:
            raise RuntimeError("update() after sync(): the replicates' class means are final; start a new bootstrap.")
        features, labels = self._check(features, labels, indices)
        if self.counts is None:
            shape = (self.replicates, self.num_classes)
            self.counts = features.new_zeros(shape)
            self.sums = features.new_zeros((*shape, features.shape[1]))
        weights = self._weights(indices, features)
        self.counts.index_add_(1, labels, weights)
        flat_sums, k, d = self.sums.view(-1, features.shape[1]), self.num_classes, features.shape[1]
        for group in self._groups(features):  # replicates batched, memory bounded
            source = (weights[group, :, None] * features).reshape(-1, d)
            rows = (torch.arange(group.start, group.stop, device=labels.device)[:, None] * k + labels).reshape(-1)
            flat_sums.index_add_(0, rows, source)

    def sync(self, group: Any = None) -> NeuralCollapseBootstrap:
        """Sum the pass just finished over the ranks of ``group`` (none without a process group); call it after each."""
        if self.counts is None:
            raise RuntimeError("sync() before any update(): the feature dimension is unknown on this rank.")
        if self.stage == 0:
            flat = _all_reduce(torch.cat([self.counts.reshape(-1), self.sums.reshape(-1)]), group)
            self.counts, self.sums = flat[: self.counts.numel()].view_as(self.counts), flat[self.counts.numel() :]
            self.sums = self.sums.view(*self.counts.shape, -1)
            self.means = self.sums / torch.where(self.counts > 0, self.counts, 1.0)[..., None]
            self._top_directions()
        elif self.stage == 1:
            if self.second is None:
                raise RuntimeError("The second sync() needs update_ncc() with every batch first.")
            self.second = _all_reduce(self.second, group)
        else:
            raise RuntimeError("sync() was already called after both passes.")
        self.stage += 1
        return self

    # -- second pass -------------------------------------------------------------------------------
    def update_ncc(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> None:
        """Second pass, after the first :meth:`sync`: the same points again, with the classifier ``W``, ``b``."""
        if self.stage == 0 and not _distributed():
            self.sync()  # one process: the first pass's sums are complete
        if self.stage != 1:
            raise RuntimeError("update_ncc() needs the replicates' class means: call sync() after the first pass.")
        features, labels = self._check(features, labels, indices)
        weight, bias = self._classifier(weight, bias)
        k = self.num_classes
        if self.second is None:
            self.second = features.new_zeros(self.replicates, 2 * k + 3)
        predicted = (features @ weight.T + (bias if bias is not None else 0.0)).argmax(dim=1)
        correct = (predicted == labels).to(_FLOAT)
        weights = self._weights(indices, features)
        for group in self._groups(features):  # replicates batched, memory bounded
            sample_weight, means, present = weights[group], self.means[group], self.counts[group] > 0
            residual = features - means[:, labels]  # (g, n, d): against each replicate's own class means
            second = self.second[group]
            second[:, :k].index_add_(1, labels, sample_weight * residual.pow(2).sum(dim=2))
            second[:, k : 2 * k] += torch.einsum("gn,gnk->gk", sample_weight, (residual @ self.basis[group].mT).pow(2))
            # ‖h − μ‖² up to ‖h‖², which does not change the nearest centre: one batched product
            distances = means.pow(2).sum(dim=2)[:, None, :] - 2.0 * features @ means.mT
            nearest = distances.masked_fill(~present[:, None, :], math.inf).argmin(dim=2)
            disagree = (predicted != nearest).to(_FLOAT)
            second[:, 2 * k :] += torch.stack(
                [(sample_weight * disagree).sum(1), sample_weight @ correct, sample_weight.sum(1)], dim=1
            )

    # -- results -----------------------------------------------------------------------------------
    def compute(self, weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every metric of each replicate, ``(B,)`` float64 (NaN where a resample kept fewer than two classes)."""
        if self.stage < 1:
            raise RuntimeError("compute() needs sync() after the first pass (and update_ncc() for NC1 and NC4).")
        if weight is not None:
            weight, _ = self._classifier(weight, None)
        rows = [self._replicate_metrics(b, weight) for b in range(self.replicates)]
        names = dict.fromkeys(name for row in rows for name in row)
        return {name: torch.tensor([row.get(name, math.nan) for row in rows], dtype=_FLOAT) for name in names}

    def standard_errors(self, weight: torch.Tensor | None = None) -> dict[str, float]:
        """The bootstrap standard error of each metric: the standard deviation over the replicates."""
        return {name: replicate_standard_error(values) for name, values in self.compute(weight).items()}

    # -- internals ---------------------------------------------------------------------------------
    def _check(
        self, features: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if indices.shape != labels.shape:
            raise ValueError(f"indices must give each point's global index: shape {tuple(labels.shape)}.")
        device = self.counts.device if self.counts is not None else features.device
        return checked_batch(features, labels, self.num_classes, device)

    def _weights(self, indices: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return poisson_weights(self.seed, self.replicates, indices).to(features.device)

    def _classifier(self, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = weight.detach().to(device=self.means.device, dtype=_FLOAT)
        if weight.shape != self.means.shape[1:]:
            raise ValueError(f"weight must be the (num_classes, dim) classifier matrix, got {tuple(weight.shape)}.")
        return weight, None if bias is None else bias.detach().to(weight)

    def _centred(self, replicate: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The present classes of a replicate: mask, counts and ``M̄`` (means minus the weighted global mean)."""
        present = self.counts[replicate] > 0
        counts, means = self.counts[replicate][present], self.means[replicate][present]
        return present, counts, means - (counts[:, None] * means).sum(dim=0) / counts.sum()

    def _top_directions(self) -> None:
        self.basis = torch.zeros_like(self.means)
        self.singular = []
        for replicate in range(self.replicates):
            present, _, centred = self._centred(replicate)
            if int(present.sum()) < 2:  # a resample of one class: its metrics are undefined
                self.singular.append(None)
                continue
            _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
            rank = min(centred.shape[0] - 1, centred.shape[1])
            self.basis[replicate, :rank] = vh[:rank]
            self.singular.append(singular[:rank])

    def _groups(self, features: torch.Tensor) -> list[slice]:
        """Slices of the replicates whose per-batch ``(g, n, d + K)`` intermediates stay within 2²² numbers."""
        size = max(1, 2**22 // max(1, features.shape[0] * (features.shape[1] + self.num_classes)))
        return [slice(begin, min(begin + size, self.replicates)) for begin in range(0, self.replicates, size)]

    def _replicate_metrics(self, replicate: int, weight: torch.Tensor | None) -> dict[str, float]:
        if self.singular[replicate] is None:
            return {}
        k = self.num_classes
        present, counts, centred = self._centred(replicate)
        total, num_present = counts.sum(), int(present.sum())
        metrics = {"nc2": _etf_distance(centred @ centred.T), **_equinorm_equiangle(centred)}
        if weight is not None:
            metrics["nc3"] = _etf_distance(weight[present] @ centred.T)
        if self.stage == 2 and bool(self.second[replicate, -1] > 0):  # the second pass's sums
            row, singular = self.second[replicate], self.singular[replicate]
            within_trace = row[:k].sum() / total
            metrics["nc1"] = float((row[k : k + singular.shape[0]] / total / singular.pow(2)).sum())
            metrics["nc1_trace"] = float(within_trace * num_present / centred.pow(2).sum())
            metrics["cdnv"] = _cdnv(self.means[replicate][present], row[:k][present] / counts)
            metrics["nc4"], metrics["accuracy"] = float(row[2 * k] / row[-1]), float(row[2 * k + 1] / row[-1])
        return metrics


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(tensor: torch.Tensor, group: Any) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return tensor
    dist.all_reduce(tensor, group=group)
    return tensor
