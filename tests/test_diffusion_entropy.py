"""DSE and DSMI: separated blobs give log2 k, DSE rises with intrinsic dimension, DSMI with and without a relation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_regs.functional.diffusion_entropy import (
    diffusion_eigenvalues,
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
    discretize,
    median_distance,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Small float64 eigenproblems: one thread (two threads on two shared cores oversubscribe and crawl)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def blobs(k: int, per_blob: int = 60, dim: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` tight blobs (std 0.5) with centres ~30 apart: the reference check's setting (σ = 5)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(k).repeat_interleave(per_blob)
    centres = 30.0 * torch.randn(k, dim, generator=generator)
    return centres[labels] + 0.5 * torch.randn(len(labels), dim, generator=generator), labels


@pytest.mark.parametrize(("k", "expected"), [(2, 1.0), (4, 2.0), (8, 3.0)])
def test_separated_blobs_give_log2_k_at_large_t(k, expected):
    z, _ = blobs(k)
    assert diffusion_spectral_entropy(z, sigma=5.0, t=10) == pytest.approx(expected, abs=1e-3)
    assert diffusion_spectral_entropy(z, sigma=5.0, t=1) > expected + 1.0  # at t = 1 the in-blob spectrum counts


def test_entropy_rises_with_intrinsic_dimension():
    # Uniform data of intrinsic dimension 1/2/4/8, linearly embedded in 64-D (N = 500, σ = 1); the reference
    # check measured 2.60 / 5.16 / 8.45 / 8.96.
    generator = torch.Generator().manual_seed(0)
    values = []
    for dim in (1, 2, 4, 8):
        embedding = torch.randn(dim, 64, generator=generator)
        values.append(diffusion_spectral_entropy(torch.rand(500, dim, generator=generator) @ embedding, sigma=1.0))
    assert values == sorted(values) and values[0] < 3.0 < 8.0 < values[-1] <= np.log2(500)
    assert values[1] - values[0] > 1.0 and values[2] - values[1] > 1.0


def test_eigenvalues_are_the_spectrum_of_the_diffusion_operator_in_float64():
    z = torch.randn(50, 5, generator=torch.Generator().manual_seed(1))
    ours = diffusion_eigenvalues(z, sigma=1.5)
    assert ours.dtype == torch.float64
    x = z.double().numpy()
    kernel = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / (2 * 1.5**2))
    operator = kernel / kernel.sum(axis=1, keepdims=True)  # P = D^-1 G, not symmetric
    reference = np.sort(np.linalg.eigvals(operator).real)
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-10)
    p = np.abs(reference) / np.abs(reference).sum()
    assert diffusion_spectral_entropy(z, sigma=1.5) == pytest.approx(-(p * np.log2(p)).sum(), rel=1e-10)


def test_sigma_none_is_the_median_distance_and_makes_entropy_scale_free():
    z = torch.randn(80, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = z.numpy()
    distances = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))[np.triu_indices(80, 1)]
    assert median_distance(z) == pytest.approx(np.median(distances), rel=1e-12)
    assert diffusion_spectral_entropy(z) == pytest.approx(diffusion_spectral_entropy(z, sigma=median_distance(z)))
    assert diffusion_spectral_entropy(100.0 * z) == pytest.approx(diffusion_spectral_entropy(z), rel=1e-9)
    assert diffusion_spectral_entropy(100.0 * z, sigma=1.0) != pytest.approx(diffusion_spectral_entropy(z, sigma=1.0))


def test_subsampling_draws_from_its_own_generator():
    z = torch.randn(300, 4, generator=torch.Generator().manual_seed(3))
    state = torch.get_rng_state()
    first = diffusion_spectral_entropy(z, max_points=100, generator=torch.Generator().manual_seed(7))
    again = diffusion_spectral_entropy(z, max_points=100, generator=torch.Generator().manual_seed(7))
    other = diffusion_spectral_entropy(z, max_points=100, generator=torch.Generator().manual_seed(8))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not touched
    assert first == again != other
    assert diffusion_spectral_entropy(z, max_points=100) == diffusion_spectral_entropy(z, max_points=100)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_dsmi_of_separated_class_blobs_is_log2_k(k):
    z, labels = blobs(k, seed=k)
    assert diffusion_spectral_mutual_information(z, labels, sigma=5.0, t=10) == pytest.approx(np.log2(k), abs=1e-3)
    # The inputs themselves as Y (vectors: spectral clustering into k clusters) carry the same information.
    assert diffusion_spectral_mutual_information(z, z, sigma=5.0, t=10, num_clusters=k) == pytest.approx(
        np.log2(k), abs=1e-3
    )


@pytest.mark.parametrize("seed", range(3))
def test_dsmi_of_labels_independent_of_z_is_about_zero(seed):
    generator = torch.Generator().manual_seed(seed)
    z, labels = torch.randn(400, 8, generator=generator), torch.randint(0, 4, (400,), generator=generator)
    assert abs(diffusion_spectral_mutual_information(z, labels)) < 0.05
    related = diffusion_spectral_mutual_information(z + 4.0 * torch.eye(4, 8)[labels], labels)
    assert related > 0.3  # the same points shifted by their label: a relation DSMI sees


def test_discretize_bins_scalars_and_clusters_vectors():
    assert discretize(torch.tensor([3, 1, 3])).tolist() == [3, 1, 3]
    assert discretize(torch.tensor([0.0, 0.05, 0.5, 0.95, 1.0]), num_bins=4).tolist() == [0, 0, 2, 3, 3]
    z, labels = blobs(3, per_blob=20, dim=8)
    clusters = discretize(z, num_clusters=3)
    assert len(clusters.unique()) == 3
    assert all(len(clusters[labels == k].unique()) == 1 for k in range(3))  # each blob one cluster


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="sigma must be positive"):
        diffusion_eigenvalues(torch.randn(4, 2), sigma=0.0)
    with pytest.raises(ValueError, match="diffusion time t"):
        diffusion_spectral_entropy(torch.randn(4, 2), t=0)
    with pytest.raises(ValueError, match="one y per point"):
        diffusion_spectral_mutual_information(torch.randn(4, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"points \(N, ...\)"):
        diffusion_spectral_entropy(torch.randn(4))
    assert diffusion_spectral_entropy(torch.zeros(10, 3)) == pytest.approx(
        0.0, abs=1e-12
    )  # coinciding points (dead units): no entropy
