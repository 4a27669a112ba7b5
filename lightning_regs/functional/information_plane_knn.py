"""The information plane of a stochastic layer ``T' = T + εZ``: PCA codes and a Kozachenko–Leonenko kNN entropy.

Butakov et al. (ICLR 2024) make the layer stochastic with Gaussian noise, compress it, and estimate mutual
information on the compressed codes with k-nearest-neighbour entropies. Here, from the equations:

1. ``ε = noise_ratio · std(T)`` (the standard deviation of all the layer's activations on the probe), and
   ``T' = T + εZ`` with ``Z ~ N(0, I)`` drawn from the ``generator`` given (never the global RNG);
2. the codes ``C`` are ``T'`` centred and projected on its first ``m = min(num_components, d, N − 1)`` principal
   directions;
3. ``H(C)`` by the Kozachenko–Leonenko estimator (:func:`knn_entropy`), ``H(C | X)`` the entropy of the noise
   projected on the (orthonormal) PCA basis, ``(m/2) log(2πeε²)`` in closed form, so
   ``I(X;T') = H(C) − (m/2) log(2πeε²)`` and ``I(T';Y) = H(C) − Σ_y p(y) H(C | Y = y)``, the class-wise entropy
   estimated on that class's codes.

Every value is in bits.
"""

from __future__ import annotations

import math

import torch

from lightning_regs.functional.information_plane import InformationPlanePoint, class_indices, probe_points

__all__ = ["knn_entropy", "lossy_knn"]


def _check_k(k: int, num_points: int, what: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (the neighbour whose distance is read) must be a positive int, got {k!r}.")
    if num_points <= k:
        raise ValueError(
            f"The kNN entropy of {what} needs more than k = {k} points and has {num_points}: give more points "
            "(num_points) or a smaller k."
        )


def _knn_entropy_nats(points: torch.Tensor, k: int) -> float:
    """``ψ(N) − ψ(k) + log V_D + (D/N) Σ_i log r_i`` (nats), ``r_i`` the distance to the k-th nearest other point."""
    n, dim = points.shape
    # Differences, not the Gram expansion: a near pair's distance keeps its digits (the expansion loses them to ‖p‖²).
    squared = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist").pow_(2).fill_diagonal_(math.inf)
    radius = squared.topk(k, dim=1, largest=False).values[:, -1].sqrt()
    if not bool((radius > 0).all()):
        raise ValueError(f"{k + 1} or more points coincide: the kNN entropy of a sample with repeated points is −∞.")
    log_unit_ball = 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim + 1.0)
    digamma = torch.special.digamma(torch.tensor([float(n), float(k)], dtype=torch.float64))
    return float(digamma[0] - digamma[1]) + log_unit_ball + dim * float(radius.log().mean())


def _principal_codes(centred: torch.Tensor, m: int) -> torch.Tensor:
    """``centred`` projected on its first ``m`` principal directions, ``(N, m)``: ``C V_m`` (``C = U S Vᵀ``).

    By the smaller Gram matrix's eigenvectors (``CᵀC``: ``V``; ``CCᵀ``: ``U``, and ``C V_m = U_m S_m``): the same
    codes as an SVD up to each column's sign, which no distance sees, at ``O(N d min(N, d))`` instead of an SVD's
    larger constant (a 512 × 4096 layer: 0.9 s by ``torch.linalg.svd``, a tenth of it this way, one thread).
    """
    n, d = centred.shape
    if d <= n:
        vectors = torch.linalg.eigh(centred.T @ centred).eigenvectors[:, -m:]  # ascending: the top m are last
        return centred @ vectors
    values, vectors = torch.linalg.eigh(centred @ centred.T)
    return vectors[:, -m:] * values[-m:].clamp_min(0.0).sqrt()


def knn_entropy(x: torch.Tensor, k: int = 5) -> float:
    """The Kozachenko–Leonenko estimate (bits) of the differential entropy of the density the rows of ``x`` come from.

    ``Ĥ = ψ(N) − ψ(k) + log V_D + (D/N) Σ_i log r_i``: ``r_i`` is the Euclidean distance from row ``i`` to its
    ``k``-th nearest other row and ``V_D = π^{D/2} / Γ(D/2 + 1)`` the volume of the unit ball in ``D`` dimensions.
    Assumptions: the rows are i.i.d. draws of a continuous density (no repeated rows), ``N > k``.

    Example::

        >>> x = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> closed_form = math.log2(2 * math.pi * math.e)  # N(0, I_2): (D/2) log2(2πe)
        >>> abs(knn_entropy(x) - closed_form) < 0.05
        True
    """
    points = probe_points(x, "x")
    _check_k(k, points.shape[0], "x")
    return _knn_entropy_nats(points, k) / math.log(2)


def lossy_knn(
    t: torch.Tensor,
    labels: torch.Tensor,
    noise_ratio: float = 0.1,
    num_components: int = 8,
    k: int = 5,
    generator: torch.Generator | None = None,
) -> InformationPlanePoint:
    """``I(X;T')`` and ``I(T';Y)`` in bits of the stochastic layer ``T' = T + εZ``, by PCA codes and kNN entropies.

    The steps are in the module docstring. Assumptions: the probe points are i.i.d. draws of a continuous input
    distribution (one noise draw per point), so unlike :func:`~lightning_regs.functional.adaptive_binning` this is
    not capped at ``log2 N``: it estimates the information of the noisy channel, limited by ``ε`` (for Gaussian
    ``T`` in ``m`` principal directions of variances ``λ_i``: ``Σ_i ½ log2(1 + λ_i/ε²)``); the noise entropy is
    computed as if the PCA basis did not depend on the noise; each class has more than ``k`` points. A layer that
    is constant on the probe (``std(T) = 0``) carries no information: ``(0, 0)``. ``I(T';Y)`` is at most
    ``(ψ(N) − Σ_y p(y) ψ(N_y)) / ln 2`` (a point's k-th neighbour among all points is no farther than within its
    class), which exceeds ``H(Y)`` by less than ``(K − ½)/(N ln 2)`` bits.

    Args:
        t: the layer's activations ``(N, ...)`` on the probe.
        labels: ``(N,)`` class ids.
        noise_ratio: ``ε`` as a share of the activations' standard deviation (> 0).
        num_components: principal components kept (``m``, at most ``d`` and ``N − 1``).
        k: the neighbour whose distance the entropy reads.
        generator: where the noise comes from; ``None``: a new generator seeded with 0.

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> t = torch.randn(2000, 1, generator=g, dtype=torch.float64)  # Gaussian T, ε = 0.1 σ_T
        >>> point = lossy_knn(t, torch.arange(2000) % 2, generator=g)
        >>> closed_form = 0.5 * math.log2(1 + 1 / 0.1**2)  # ½ log2(1 + SNR) of a Gaussian channel
        >>> abs(point.ixt - closed_form) < 0.1, abs(point.ity) < 0.05  # labels unrelated to T: I(T';Y) ≈ 0
        (True, True)
    """
    if isinstance(noise_ratio, bool) or not math.isfinite(noise_ratio) or noise_ratio <= 0:
        raise ValueError(f"noise_ratio (ε ÷ the activations' standard deviation) must be > 0, got {noise_ratio!r}.")
    if isinstance(num_components, bool) or not isinstance(num_components, int) or num_components < 1:
        raise ValueError(f"num_components must be a positive int, got {num_components!r}.")
    points = probe_points(t)
    n = points.shape[0]
    groups = class_indices(labels, n)
    _check_k(k, n, "the probe")
    for index in groups:
        _check_k(k, index.numel(), f"class {int(labels[index[0]])}")
    scale = float(points.std()) if points.numel() > 1 else 0.0
    if scale == 0.0:
        return InformationPlanePoint(0.0, 0.0)
    epsilon = noise_ratio * scale
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    noisy = points + epsilon * torch.randn(points.shape, generator=generator, dtype=torch.float64)
    centred = noisy - noisy.mean(0)
    m = min(num_components, points.shape[1], n - 1)
    codes = _principal_codes(centred, m)
    total = _knn_entropy_nats(codes, k)
    noise = 0.5 * m * math.log(2 * math.pi * math.e * epsilon**2)
    conditional = sum(index.numel() / n * _knn_entropy_nats(codes[index], k) for index in groups)
    return InformationPlanePoint((total - noise) / math.log(2), (total - conditional) / math.log(2))
