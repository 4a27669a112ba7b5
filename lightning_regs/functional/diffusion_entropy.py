"""Diffusion spectral entropy (DSE) and diffusion spectral mutual information (DSMI) of a point cloud.

Liao, Liu et al., "Assessing Neural Network Representations During Training Using Noise-Resilient
Diffusion Spectral Entropy" (ICML workshop 2023; CISS 2024), written here from the equations (the
official code has a non-commercial licence: nothing is taken from it). For points ``z_1..z_N``:

* ``G_ij = exp(−‖z_i − z_j‖² / 2σ²)``; ``K = D^{−1/2} G D^{−1/2}`` with ``D`` the row sums of ``G``
  (``K`` has the spectrum of the diffusion operator ``P = D^{−1} G`` and is symmetric, so its
  eigenvalues ``λ`` come from ``eigvalsh`` in float64);
* ``p_i = |λ_i|^t / Σ_j |λ_j|^t`` and ``DSE = −Σ_i p_i log2 p_i`` (bits);
* ``DSMI(Z; Y) = Σ_y p(y) · [DSE(Z*_y) − DSE(Z | Y = y)]``, with ``Z*_y`` a random subset of ``Z`` of
  the size of class ``y`` (averaged over ``repeats`` draws), so both entropies see as many points.

``σ`` is the paper's 10 when given so, or (``sigma=None``) the median pairwise distance of the points,
which makes DSE invariant to the scale of the features. DSMI computes ``σ`` once, on all points, and
uses it for every subset. Large ``t`` keeps only the eigenvalues near 1 (one per well-separated cluster),
so ``k`` separated blobs give ``log2 k``. Continuous ``Y`` is discretized first (:func:`discretize`):
10 equal-width bins for a scalar, spectral clustering into 10 clusters for vectors (such as the inputs).
Subsets are drawn from a ``generator`` (a fixed seed when none is given), never from the global RNG.
"""

from __future__ import annotations

import warnings

import torch

__all__ = [
    "diffusion_eigenvalues",
    "diffusion_spectral_entropy",
    "diffusion_spectral_mutual_information",
    "discretize",
    "kernel_width",
    "median_distance",
]

_FLOAT = torch.float64


def median_distance(z: torch.Tensor) -> float:
    """The median Euclidean distance between two distinct points of ``z`` ``(N, ...)`` (float64).

    Example::

        >>> median_distance(torch.tensor([[0.0], [1.0], [3.0]]))  # distances 1, 3, 2
        2.0
        >>> median_distance(torch.tensor([[0.0], [1.0], [3.0], [7.0]]))  # 1, 3, 7, 2, 6, 4: (3 + 4) / 2
        3.5
    """
    z = _flat(z)
    rows, cols = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
    distances = _squared_distances(z)[rows, cols].sqrt()
    count = distances.numel()
    if count == 0:
        return 0.0
    middle = distances.kthvalue((count + 1) // 2).values + distances.kthvalue(count // 2 + 1).values
    return float(middle / 2)  # the mean of the two middle values when their count is even, as NumPy's


def kernel_width(z: torch.Tensor, sigma: float | None = None) -> float:
    """``sigma`` when given, else the median pairwise distance of ``z`` (1 when that is 0: most points coincide).

    Example::

        >>> kernel_width(torch.tensor([[0.0], [1.0], [3.0]])), kernel_width(torch.zeros(3, 2))
        (2.0, 1.0)
        >>> kernel_width(torch.zeros(3, 2), sigma=10)
        10.0
    """
    if sigma is not None:
        return float(sigma)
    median = median_distance(z)
    # Coinciding points (e.g. dead units) have the same kernel row at any width: DSE stays defined (0 if all do).
    return median if median > 0 else 1.0


def diffusion_eigenvalues(z: torch.Tensor, sigma: float) -> torch.Tensor:
    """The eigenvalues (float64, ascending) of the symmetric diffusion matrix ``D^{−1/2} G D^{−1/2}`` of ``z``.

    Example::

        >>> far = torch.tensor([[0.0], [0.0], [100.0], [100.0]])  # two clusters of two points
        >>> diffusion_eigenvalues(far, sigma=1.0).round(decimals=6).tolist()
        [0.0, 0.0, 1.0, 1.0]
    """
    return _eigenvalues(_flat(z), sigma)


def diffusion_spectral_entropy(
    z: torch.Tensor,
    sigma: float | None = None,
    t: int = 1,
    max_points: int | None = 10_000,
    generator: torch.Generator | None = None,
) -> float:
    """DSE of the points ``z`` ``(N, ...)`` (flattened per point), in bits.

    Args:
        z: the points; any float dtype (computed in float64).
        sigma: the kernel width; ``None``: the median pairwise distance.
        t: the diffusion time (power of the eigenvalues); 1 in the paper.
        max_points: keep a random subset of this many points first (``O(N³)`` eigenvalues); ``None``: all.
        generator: draws the subset; ``None``: a generator seeded 0 (never the global RNG).

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> centres = 20.0 * torch.eye(4, 32)  # four well-separated blobs
        >>> blobs = centres.repeat_interleave(60, dim=0) + 0.1 * torch.randn(240, 32, generator=g)
        >>> round(diffusion_spectral_entropy(blobs, sigma=5.0, t=10), 3)  # log2 4
        2.0
    """
    z = _subsample(_flat(z), max_points, generator)
    return float(_entropy(_eigenvalues(z, kernel_width(z, sigma)), t))


def diffusion_spectral_mutual_information(
    z: torch.Tensor,
    y: torch.Tensor,
    sigma: float | None = None,
    t: int = 1,
    repeats: int = 5,
    max_points: int | None = 10_000,
    num_bins: int = 10,
    num_clusters: int = 10,
    generator: torch.Generator | None = None,
) -> float:
    """DSMI(Z; Y) in bits: how much knowing ``y`` lowers the diffusion spectral entropy of ``z``.

    Args:
        z: the points ``(N, ...)``.
        y: ``(N,)`` class ids, or a continuous ``(N,)`` / ``(N, ...)`` variable, discretized by :func:`discretize`.
        sigma: the kernel width, one for all subsets; ``None``: the median pairwise distance of ``z``.
        t: the diffusion time.
        repeats: random subsets ``Z*_y`` averaged per class.
        max_points: subsample ``(z, y)`` pairs to this many first; ``None``: all.
        num_bins, num_clusters: how a continuous ``y`` is discretized.
        generator: draws the subsets; ``None``: a generator seeded 0.

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> labels = torch.arange(4).repeat_interleave(50)
        >>> z = 20.0 * torch.eye(4, 16)[labels] + 0.1 * torch.randn(200, 16, generator=g)  # one blob per class
        >>> round(diffusion_spectral_mutual_information(z, labels, sigma=5.0, t=10), 2)  # log2 4
        2.0
        >>> shuffled = labels[torch.randperm(200, generator=g)]  # labels that say nothing about z
        >>> abs(diffusion_spectral_mutual_information(z, shuffled, sigma=5.0, t=10)) < 0.1
        True
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    z = _flat(z)
    if y.shape[0] != z.shape[0]:
        raise ValueError(f"z has {z.shape[0]} points and y {y.shape[0]}: give one y per point.")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    labels = discretize(y, num_bins, num_clusters).to(z.device)
    if max_points is not None and z.shape[0] > max_points:
        keep = torch.randperm(z.shape[0], generator=generator)[:max_points].to(z.device)
        z, labels = z[keep], labels[keep]
    sigma = kernel_width(z, sigma)
    classes, counts = labels.unique(return_counts=True)
    information = 0.0
    for value, count in zip(classes.tolist(), counts.tolist(), strict=True):
        conditional = _entropy(_eigenvalues(z[labels == value], sigma), t)
        subsets = torch.stack([torch.randperm(z.shape[0], generator=generator)[:count] for _ in range(repeats)])
        marginal = _entropy(_eigenvalues(z[subsets.to(z.device)], sigma), t).mean()  # the repeats in one batch
        information += count / z.shape[0] * float(marginal - conditional)
    return information


def discretize(y: torch.Tensor, num_bins: int = 10, num_clusters: int = 10, seed: int = 0) -> torch.Tensor:
    """``y`` as int64 classes: integer ids as they are; a float scalar per point in ``num_bins`` equal-width bins;
    float vectors (``(N, D)``, ``D > 1``, or images) by spectral clustering into ``num_clusters`` (scikit-learn,
    nearest-neighbour affinity, deterministic for a ``seed``).

    Example::

        >>> discretize(torch.tensor([0.0, 0.1, 0.9, 1.0]), num_bins=2).tolist()
        [0, 0, 1, 1]
    """
    if not y.is_floating_point():
        if y.dim() != 1:
            raise ValueError(f"Integer y must be (N,) class ids, got shape {tuple(y.shape)}.")
        return y.long()
    flat = y.detach().reshape(y.shape[0], -1).to(_FLOAT)
    if flat.shape[1] == 1:
        low, high = float(flat.min()), float(flat.max())
        edges = torch.linspace(low, high, num_bins + 1, dtype=_FLOAT, device=flat.device)[1:-1]
        return torch.bucketize(flat[:, 0], edges, right=True)
    from sklearn.cluster import SpectralClustering  # a well-kept spectral clustering; imported only when needed

    neighbours = min(10, flat.shape[0] - 1)
    clustering = SpectralClustering(
        n_clusters=min(num_clusters, flat.shape[0]),
        affinity="nearest_neighbors",
        n_neighbors=neighbours,
        assign_labels="cluster_qr",
        random_state=seed,
    )
    with warnings.catch_warnings():  # separated groups are what clustering looks for, not a fault
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        assigned = clustering.fit_predict(flat.cpu().numpy())
    return torch.as_tensor(assigned, dtype=torch.long, device=y.device)


def _flat(z: torch.Tensor) -> torch.Tensor:
    if z.dim() < 2 or z.shape[0] < 1:
        raise ValueError(f"Expected points (N, ...) with N >= 1, got shape {tuple(z.shape)}.")
    return z.detach().reshape(z.shape[0], -1).to(_FLOAT)


def _squared_distances(z: torch.Tensor) -> torch.Tensor:
    """``(..., N, N)`` squared distances of the points ``z`` ``(..., N, D)``."""
    norms = z.pow(2).sum(dim=-1)
    squared = (norms[..., :, None] + norms[..., None, :] - 2.0 * (z @ z.transpose(-1, -2))).clamp_(min=0.0)
    squared.diagonal(dim1=-2, dim2=-1).zero_()
    return squared


def _eigenvalues(z: torch.Tensor, sigma: float) -> torch.Tensor:
    """The diffusion matrix's eigenvalues of each point set in ``z`` ``(..., N, D)`` (float64)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}.")
    kernel = torch.exp(-_squared_distances(z) / (2.0 * sigma**2))
    scale = kernel.sum(dim=-1).rsqrt()
    return torch.linalg.eigvalsh(scale[..., :, None] * kernel * scale[..., None, :])


def _subsample(z: torch.Tensor, max_points: int | None, generator: torch.Generator | None) -> torch.Tensor:
    if max_points is None or z.shape[0] <= max_points:
        return z
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    return z[torch.randperm(z.shape[0], generator=generator)[:max_points].to(z.device)]


def _entropy(eigenvalues: torch.Tensor, t: int) -> torch.Tensor:
    """``−Σ p log2 p`` of ``p ∝ |λ|^t`` over the last dimension (``0 log 0 = 0``)."""
    if t < 1:
        raise ValueError(f"The diffusion time t must be a positive integer, got {t}.")
    powered = eigenvalues.abs().pow(t)
    p = powered / powered.sum(dim=-1, keepdim=True)
    return -torch.where(p > 0, p * torch.log2(p), torch.zeros_like(p)).sum(dim=-1)
