"""Neural collapse metrics NC1–NC4 and CDNV from class statistics that stream and merge exactly.

Papyan, Han, Donoho, "Prevalence of neural collapse during the terminal phase of deep learning training"
(PNAS 2020) define the metrics; the trace quotient is the NC1 of Tirer, Huang, Niles-Weed (ICML 2023);
CDNV is the class-distance normalized variance of Galanti, György, Hutter (ICLR 2022). With ``h`` the
features (the classifier's input), ``μ_k`` the class means over the present classes, ``μ_G`` the mean
of all features, ``M̄`` the ``K × d`` matrix of rows ``μ_k − μ_G``, ``W`` the ``K × d`` classifier,
``Σ_W = (1/n) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ``, ``Σ_B = M̄ᵀM̄ / K`` and ``E = (I − 11ᵀ/K)/√(K−1)``
(the Gram matrix of a simplex ETF, Frobenius norm 1):

==================  ==========================================================================
``nc1``             ``tr(Σ_W Σ_B^†) / K`` (Papyan; ``Σ_B^†`` from the top ``min(K−1, d)`` directions)
``nc1_trace``       ``tr Σ_W / tr Σ_B``
``nc2``             ``‖M̄M̄ᵀ/‖M̄M̄ᵀ‖_F − E‖_F`` (distance to the simplex ETF)
``nc2_equinorm``    coefficient of variation (std with ``ddof=1`` / mean) of ``‖μ_k − μ_G‖``
``nc2_equiangle``   std (``ddof=1``) of the cosines between ``μ_k − μ_G`` and ``μ_j − μ_G``, ``k < j``
``nc2_max_angle``   mean of ``|cos + 1/(K−1)|`` over the same pairs (Papyan's "maximal-angle")
``nc3``             ``‖WM̄ᵀ/‖WM̄ᵀ‖_F − E‖_F`` (self-duality; needs ``W``)
``nc4``             share of samples where ``argmax(Wh + b) ≠ argmin_k ‖h − μ_k‖`` (needs the second pass)
``accuracy``        share of samples where ``argmax(Wh + b)`` is the label (second pass)
``cdnv``            mean over pairs ``k < j`` of ``(σ_k² + σ_j²) / (2‖μ_k − μ_j‖²)``, ``σ_k² = E‖h − μ_k‖²``
==================  ==========================================================================

Classes without a sample are left out (``K`` counts the present ones; ``W``'s rows are taken for them).

:class:`NeuralCollapseAccumulator` keeps, in float64, the class counts, the class means, the pooled
within-class scatter ``Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ`` and each class's scatter trace: memory
``O(K·d + d²)`` however many samples pass. Batches merge with the parallel-variance update (Chan et al.),
exact in exact arithmetic and free of the cancellation of raw second moments, which would eat the tiny
within-class scatter of a collapsed network. **NC4 needs a second pass**: a sample's nearest class centre
is known only once every sample has been seen, so after the first pass (and :meth:`sync` across ranks)
the features are fed again to :meth:`~NeuralCollapseAccumulator.update_ncc` — from a cache of this
process's features or by running the forwards again. :func:`neural_collapse` does both passes on
features held in memory. Optional per-sample weights (``sample_weight``) count a sample that many times: every
count, mean and scatter becomes a weighted one, which is what a bootstrap replicate computes
(:mod:`lightning_regs.functional.neural_collapse_bootstrap`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["NeuralCollapseAccumulator", "checked_batch", "neural_collapse"]

_FLOAT = torch.float64


class NeuralCollapseAccumulator:
    """Streaming float64 class statistics of features; :meth:`compute` returns the neural collapse metrics.

    Use: :meth:`update` with every batch of ``(features, labels)``; :meth:`sync` (under
    ``torch.distributed``: gathers every rank's statistics and merges them in rank order, so every rank
    holds the same); for NC4, :meth:`update_ncc` with every batch again and :meth:`sync` once more;
    then :meth:`compute`. :meth:`merge` combines two accumulators (other batches, other processes).

    Args:
        num_classes: ``K``, the number of classes (labels lie in ``[0, K)``).

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> means = torch.eye(3, 5) * 10  # three well-separated class means in 5 dimensions
        >>> labels = torch.arange(3).repeat(20)
        >>> features = means[labels] + 0.01 * torch.randn(60, 5, generator=g)
        >>> accumulator = NeuralCollapseAccumulator(num_classes=3)
        >>> for chunk in range(0, 60, 16):  # stream in batches
        ...     accumulator.update(features[chunk : chunk + 16], labels[chunk : chunk + 16])
        >>> for chunk in range(0, 60, 16):  # the second pass, for NC4
        ...     accumulator.update_ncc(features[chunk : chunk + 16], labels[chunk : chunk + 16], weight=means)
        >>> metrics = accumulator.compute(weight=means)
        >>> metrics["nc1"] < 1e-5, round(metrics["nc2"], 3), metrics["nc4"], metrics["accuracy"]
        (True, 0.0, 0.0, 1.0)
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
        self.num_classes = int(num_classes)
        self.counts: torch.Tensor | None = None  # (K,)
        self.means: torch.Tensor | None = None  # (K, d)
        self.scatter: torch.Tensor | None = None  # (d, d), pooled within-class
        self.class_scatter: torch.Tensor | None = None  # (K,), trace of each class's scatter
        self.ncc = torch.zeros(3, dtype=_FLOAT)  # second pass: NCC disagreements, classifier correct, samples
        self.synced = False  # the first-pass statistics already hold every rank's samples
        self._ncc_synced = torch.zeros(3, dtype=_FLOAT)  # the part of ``ncc`` that already holds every rank's

    # -- first pass --------------------------------------------------------------------------------
    def update(self, features: torch.Tensor, labels: torch.Tensor, sample_weight: torch.Tensor | None = None) -> None:
        """Add a batch: ``features`` ``(B, d)``, ``labels`` ``(B,)`` int64 in ``[0, K)``.

        ``sample_weight`` ``(B,)`` (finite, ``>= 0``) weighs each sample: counts become sums of weights and
        every mean and scatter is weighted, so an integer weight ``k`` counts a sample as ``k`` copies of it (a
        bootstrap resample); ``None`` counts each sample once.
        """
        if self.synced or bool(self.ncc.any()):
            raise RuntimeError(
                "NeuralCollapseAccumulator.update after sync() or update_ncc(): the class means are final by then; "
                "start a new accumulator for new samples."
            )
        features, labels = self._check(features, labels)
        self.merge(self._batch_statistics(features, labels, self._sample_weight(sample_weight, labels)))

    def merge(self, other: NeuralCollapseAccumulator) -> NeuralCollapseAccumulator:
        """Combine ``other``'s samples into this accumulator (exact: the result does not depend on the split)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"Cannot merge accumulators of {other.num_classes} and {self.num_classes} classes.")
        self.ncc = self.ncc + other.ncc.to(self.ncc.device)
        if other.counts is None:
            return self
        if self.counts is None:
            self.counts, self.means = other.counts.clone(), other.means.clone()
            self.scatter, self.class_scatter = other.scatter.clone(), other.class_scatter.clone()
            return self
        if other.means.shape != self.means.shape:
            raise ValueError(f"Cannot merge features of {other.means.shape[1]} and {self.means.shape[1]} dimensions.")
        counts = self.counts + other.counts
        delta = other.means - self.means
        # counts > 0 may be below 1 with sample weights; integer counts divide exactly as by counts.clamp(min=1)
        share = torch.where(counts > 0, other.counts / torch.where(counts > 0, counts, 1.0), torch.zeros_like(counts))
        weight = self.counts * share  # n_a n_b / (n_a + n_b)
        self.means = self.means + delta * share[:, None]
        self.scatter = self.scatter + other.scatter + (delta * weight[:, None]).T @ delta
        self.class_scatter = self.class_scatter + other.class_scatter + weight * delta.pow(2).sum(dim=1)
        self.counts = counts
        return self

    def sync(self, group: Any = None) -> NeuralCollapseAccumulator:
        """Make every rank of ``group`` hold the statistics of all ranks' samples (no-op without a process group).

        The first call gathers the first-pass statistics and merges them in rank order (the same bits on
        every rank); later calls sum the second-pass counts added since. Every rank must call it.
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            self.synced = True
            self._ncc_synced = self.ncc.clone()
            return self
        if not self.synced:
            if self.counts is None:
                raise RuntimeError("sync() before any update(): the feature dimension is unknown on this rank.")
            self._gather_and_merge(group)
            self.synced = True
        local = (self.ncc - self._ncc_synced).to(self.counts.device)
        dist.all_reduce(local, group=group)
        self.ncc = self._ncc_synced + local.to(self.ncc.device)
        self._ncc_synced = self.ncc.clone()
        return self

    # -- second pass -------------------------------------------------------------------------------
    def update_ncc(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        sample_weight: torch.Tensor | None = None,
    ) -> None:
        """Second pass, for NC4: count where ``argmax(Wh + b)`` and the nearest class mean disagree.

        Call it after every :meth:`update` (and after :meth:`sync` under ``torch.distributed``), with the same
        samples again (and the same ``sample_weight``); ``weight`` is ``(K, d)``, ``bias`` ``(K,)`` or ``None``.
        """
        if self.counts is None:
            raise RuntimeError("update_ncc needs the class means: call update() with every batch first.")
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and not self.synced:
            raise RuntimeError("update_ncc under torch.distributed needs every rank's class means: call sync() first.")
        features, labels = self._check(features, labels)
        weight, bias = self._classifier(weight, bias)
        present = self.counts > 0
        distances = torch.cdist(features, self.means).masked_fill(~present, math.inf)
        nearest = distances.argmin(dim=1)
        logits = features @ weight.T + (bias if bias is not None else 0.0)
        predicted = logits.argmax(dim=1)
        sample_weight = self._sample_weight(sample_weight, labels)
        if sample_weight is None:
            batch = torch.stack(
                [(predicted != nearest).sum(), (predicted == labels).sum(), labels.new_tensor(len(labels))]
            )
        else:
            disagree, correct = (predicted != nearest).to(_FLOAT), (predicted == labels).to(_FLOAT)
            batch = torch.stack([sample_weight @ disagree, sample_weight @ correct, sample_weight.sum()])
        self.ncc = self.ncc + batch.to(self.ncc)

    # -- metrics -----------------------------------------------------------------------------------
    def compute(self, weight: torch.Tensor | None = None) -> dict[str, float]:
        """The metrics of the module docstring (``nc3`` needs ``weight``; ``nc4``, ``accuracy`` a second pass)."""
        if self.counts is None:
            raise RuntimeError("compute() before any update(): no samples were seen.")
        present = self.counts > 0
        num_present = int(present.sum())
        if num_present < 2:
            raise ValueError(
                f"Neural collapse needs samples of at least two classes; these samples hold {num_present}. "
                "Measure more points (num_points) or a split that has several classes."
            )
        counts, means = self.counts[present], self.means[present]
        total = counts.sum()
        centred = means - (counts[:, None] * means).sum(dim=0) / total  # M̄: rows μ_k − μ_G
        within = self.scatter / total  # Σ_W
        metrics = {
            "nc1": _papyan_nc1(within, centred),
            "nc1_trace": float(torch.trace(within) * num_present / centred.pow(2).sum()),
            "nc2": _etf_distance(centred @ centred.T),
            **_equinorm_equiangle(centred),
            "cdnv": _cdnv(means, self.class_scatter[present] / counts),
        }
        if weight is not None:
            weight, _ = self._classifier(weight, None)
            metrics["nc3"] = _etf_distance(weight[present] @ centred.T)
        if self.ncc[2] > 0:
            metrics["nc4"] = float(self.ncc[0] / self.ncc[2])
            metrics["accuracy"] = float(self.ncc[1] / self.ncc[2])
        return metrics

    # -- internals ---------------------------------------------------------------------------------
    def _check(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.counts.device if self.counts is not None else features.device
        return checked_batch(features, labels, self.num_classes, device)

    def _sample_weight(self, sample_weight: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor | None:
        if sample_weight is None:
            return None
        if sample_weight.shape != labels.shape:
            raise ValueError(
                f"sample_weight must hold one weight per sample, shape {tuple(labels.shape)}; "
                f"got {tuple(sample_weight.shape)}."
            )
        sample_weight = sample_weight.detach().to(device=labels.device, dtype=_FLOAT)
        if not bool(torch.isfinite(sample_weight).all()) or bool((sample_weight < 0).any()):
            raise ValueError("sample_weight must be finite and >= 0 (a sample counted 0, 1, 2, ... times).")
        return sample_weight

    def _classifier(self, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = weight.detach().to(device=self.means.device, dtype=_FLOAT)
        if weight.shape != self.means.shape:
            raise ValueError(
                f"weight must be the (num_classes, dim) = {tuple(self.means.shape)} classifier matrix, "
                f"got {tuple(weight.shape)}."
            )
        return weight, None if bias is None else bias.detach().to(weight)

    def _batch_statistics(
        self, features: torch.Tensor, labels: torch.Tensor, sample_weight: torch.Tensor | None = None
    ) -> NeuralCollapseAccumulator:
        if sample_weight is not None:
            return self._weighted_batch_statistics(features, labels, sample_weight)
        batch = NeuralCollapseAccumulator(self.num_classes)
        counts = torch.bincount(labels, minlength=self.num_classes).to(_FLOAT)
        sums = features.new_zeros(self.num_classes, features.shape[1]).index_add_(0, labels, features)
        batch.means = sums / counts.clamp(min=1)[:, None]
        centred = features - batch.means[labels]
        batch.counts = counts
        batch.scatter = centred.T @ centred
        batch.class_scatter = counts.new_zeros(self.num_classes).index_add_(0, labels, centred.pow(2).sum(dim=1))
        return batch

    def _weighted_batch_statistics(
        self, features: torch.Tensor, labels: torch.Tensor, sample_weight: torch.Tensor
    ) -> NeuralCollapseAccumulator:
        batch = NeuralCollapseAccumulator(self.num_classes)
        counts = features.new_zeros(self.num_classes).index_add_(0, labels, sample_weight)
        sums = features.new_zeros(self.num_classes, features.shape[1])
        sums.index_add_(0, labels, features * sample_weight[:, None])
        batch.means = sums / torch.where(counts > 0, counts, 1.0)[:, None]
        centred = features - batch.means[labels]
        weighted = centred * sample_weight[:, None]
        batch.counts = counts
        batch.scatter = weighted.T @ centred
        batch.class_scatter = counts.new_zeros(self.num_classes).index_add_(0, labels, (weighted * centred).sum(dim=1))
        return batch

    def _gather_and_merge(self, group: Any) -> None:
        parts = (self.counts, self.means, self.scatter, self.class_scatter)
        flat = torch.cat([part.reshape(-1) for part in parts])
        gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, flat, group=group)
        merged = NeuralCollapseAccumulator(self.num_classes)
        sizes = [part.numel() for part in parts]
        for rank_flat in gathered:
            rank = NeuralCollapseAccumulator(self.num_classes)
            counts, means, scatter, class_scatter = rank_flat.split(sizes)
            rank.counts, rank.means = counts, means.view_as(self.means)
            rank.scatter, rank.class_scatter = scatter.view_as(self.scatter), class_scatter
            merged.merge(rank)
        self.counts, self.means, self.scatter, self.class_scatter = (
            merged.counts,
            merged.means,
            merged.scatter,
            merged.class_scatter,
        )


def neural_collapse(
    features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    num_classes: int | None = None,
    sample_weight: torch.Tensor | None = None,
) -> dict[str, float]:
    """The neural collapse metrics of ``features`` ``(N, d)`` with ``labels`` ``(N,)`` (see the module docstring).

    With the classifier ``weight`` ``(K, d)`` (and ``bias``) also ``nc3``, ``nc4`` and ``accuracy``. ``K`` is
    ``num_classes``, else ``weight``'s rows, else ``labels.max() + 1``. ``sample_weight`` ``(N,)`` counts
    sample ``i`` ``sample_weight[i]`` times (see :meth:`NeuralCollapseAccumulator.update`).

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> K = 4
        >>> etf = (torch.eye(K) - 1 / K) * 5.0  # class means forming a simplex ETF (in K dimensions)
        >>> labels = torch.arange(K).repeat(10)
        >>> features = etf[labels] + 1e-6 * torch.randn(40, K, generator=g)
        >>> metrics = neural_collapse(features, labels, weight=etf)
        >>> all(metrics[name] < 1e-5 for name in ("nc1", "nc2", "nc3", "nc4")), metrics["accuracy"]
        (True, 1.0)
        >>> neural_collapse(torch.randn(40, K, generator=g), labels)["nc1"] > 1  # no collapse: spread within classes
        True
    """
    if num_classes is None:
        num_classes = int(weight.shape[0]) if weight is not None else int(labels.max()) + 1
    accumulator = NeuralCollapseAccumulator(num_classes)
    accumulator.update(features, labels, sample_weight)
    accumulator.synced = True  # one process's samples: the statistics are complete
    if weight is not None:
        accumulator.update_ncc(features, labels, weight, bias, sample_weight)
    return accumulator.compute(weight)


def checked_batch(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, labels)`` as float64 ``(B, d)`` and int64 ``(B,)`` on ``device``, or an error saying what is wrong.

    Example::

        >>> features, labels = checked_batch(torch.ones(2, 3), torch.tensor([0, 1]), 2, torch.device("cpu"))
        >>> features.dtype, labels.tolist()
        (torch.float64, [0, 1])
    """
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"Expected features (B, d) and labels (B,); got {tuple(features.shape)} and {tuple(labels.shape)}. "
            "Flatten the features to one vector per sample; labels are class ids, not probabilities."
        )
    if labels.is_floating_point():
        raise ValueError("labels must be int64 class ids, got a floating-point tensor (soft targets?).")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got values in [{int(labels.min())}, {int(labels.max())}]."
        )
    return features.detach().to(device=device, dtype=_FLOAT), labels.detach().to(device=device, dtype=torch.long)


def _papyan_nc1(within: torch.Tensor, centred: torch.Tensor) -> float:
    # Σ_B^† = K Σ_i v_i v_iᵀ / s_i² over M̄'s top singular directions, so tr(Σ_W Σ_B^†)/K = Σ_i v_iᵀΣ_W v_i / s_i².
    # Σ_B has rank ≤ K−1 (the rows of M̄ are count-weighted to 0): the smaller singular values are rounding.
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    rank = min(centred.shape[0] - 1, centred.shape[1])
    singular, vh = singular[:rank], vh[:rank]
    return float(((vh @ within * vh).sum(dim=1) / singular.pow(2)).sum())


def _etf_distance(gram: torch.Tensor) -> float:
    k = gram.shape[0]
    etf = (torch.eye(k, dtype=gram.dtype, device=gram.device) - 1.0 / k) / math.sqrt(k - 1)
    return float(torch.linalg.matrix_norm(gram / torch.linalg.matrix_norm(gram) - etf))


def _equinorm_equiangle(centred: torch.Tensor) -> dict[str, float]:
    k = centred.shape[0]
    norms = centred.norm(dim=1)
    unit = centred / norms[:, None]
    rows, cols = torch.triu_indices(k, k, offset=1)
    cosines = (unit @ unit.T)[rows, cols]
    return {
        "nc2_equinorm": float(norms.std() / norms.mean()),
        "nc2_equiangle": float(cosines.std()) if cosines.numel() > 1 else 0.0,
        "nc2_max_angle": float((cosines + 1.0 / (k - 1)).abs().mean()),
    }


def _cdnv(means: torch.Tensor, variances: torch.Tensor) -> float:
    rows, cols = torch.triu_indices(means.shape[0], means.shape[0], offset=1)
    distances = (means[rows] - means[cols]).pow(2).sum(dim=1)
    return float(((variances[rows] + variances[cols]) / (2 * distances)).mean())
