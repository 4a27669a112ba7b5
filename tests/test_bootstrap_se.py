"""Resampling errors: the weighted NC accumulator, the NC bootstrap and DSE half-sampling against sampling error."""

from __future__ import annotations

import pytest
import torch

from lightning_regs.functional.bootstrap import half_sample_errors, poisson_weights
from lightning_regs.functional.diffusion_entropy import diffusion_spectral_entropy
from lightning_regs.functional.neural_collapse import NeuralCollapseAccumulator, neural_collapse
from lightning_regs.functional.neural_collapse_bootstrap import NeuralCollapseBootstrap

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small float64 products: two threads on two shared cores oversubscribe
    yield
    torch.set_num_threads(threads)


def problem(seed: int, num_classes: int = 5, dim: int = 7, size: int = 90):
    """Unbalanced labels (every class present), features with a class signal, a random classifier."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.arange(num_classes), torch.randint(0, num_classes, (size - num_classes,), generator=g)])
    features = 2.0 * torch.randn(num_classes, dim, generator=g, dtype=F64)[labels]
    features = features + torch.randn(size, dim, generator=g, dtype=F64)
    weight = torch.randn(num_classes, dim, generator=g, dtype=F64)
    bias = torch.randn(num_classes, generator=g, dtype=F64)
    return features, labels, weight, bias


def streamed(features, labels, weight, bias, sample_weight=None, chunk: int = 16) -> dict[str, float]:
    accumulator = NeuralCollapseAccumulator(weight.shape[0])
    parts = torch.arange(len(labels)).split(chunk)
    for part in parts:
        accumulator.update(features[part], labels[part], None if sample_weight is None else sample_weight[part])
    accumulator.sync()
    for part in parts:
        accumulator.update_ncc(
            features[part], labels[part], weight, bias, None if sample_weight is None else sample_weight[part]
        )
    return accumulator.compute(weight)


def bootstrap_errors(features, labels, weight, bias, replicates: int, seed: int, chunks=(90,)) -> dict:
    """The bootstrap's replicates, fed in chunks of the given sizes (each chunk with its global indices)."""
    bootstrap = NeuralCollapseBootstrap(weight.shape[0], replicates, seed=seed)
    parts = torch.arange(len(labels)).split(list(chunks))
    for part in parts:
        bootstrap.update(features[part], labels[part], part)
    bootstrap.sync()
    for part in reversed(parts):  # any order, any split
        bootstrap.update_ncc(features[part], labels[part], part, weight, bias)
    return bootstrap.sync().compute(weight)


def test_weights_of_one_give_the_unweighted_accumulator_and_integer_weights_duplicate_rows():
    features, labels, weight, bias = problem(0)
    plain = streamed(features, labels, weight, bias)
    ones = streamed(features, labels, weight, bias, torch.ones(len(labels), dtype=F64))
    assert set(ones) == set(plain) and len(plain) == 10
    for name, value in plain.items():
        assert ones[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
    counts = torch.randint(0, 4, (len(labels),), generator=torch.Generator().manual_seed(1))
    counts[: weight.shape[0]] = 1  # every class keeps a sample
    duplicated = neural_collapse(features.repeat_interleave(counts, 0), labels.repeat_interleave(counts), weight, bias)
    weighted = streamed(features, labels, weight, bias, counts.to(F64), chunk=7)
    for name, value in duplicated.items():
        assert weighted[name] == pytest.approx(value, rel=1e-10, abs=1e-12), name


def test_fractional_weights_merge_across_batches_as_in_one_batch():
    # A class whose total weight is below 1 must be divided by that weight, not by 1, when batches merge.
    features, labels, weight, bias = problem(2)
    small = torch.rand(len(labels), generator=torch.Generator().manual_seed(3), dtype=F64) * 0.05
    one_batch = neural_collapse(features, labels, weight, bias, sample_weight=small)
    for name, value in streamed(features, labels, weight, bias, small, chunk=5).items():
        assert value == pytest.approx(one_batch[name], rel=1e-9, abs=1e-12), name
    with pytest.raises(ValueError, match="finite and >= 0"):
        neural_collapse(features, labels, weight, sample_weight=-small)


def test_each_replicate_is_the_weighted_accumulator_and_the_split_does_not_matter():
    features, labels, weight, bias = problem(4)
    replicates = bootstrap_errors(features, labels, weight, bias, 12, seed=5, chunks=(17, 23, 40, 10))
    weights = poisson_weights(5, 12, torch.arange(len(labels)))
    for b in range(12):
        reference = neural_collapse(features, labels, weight, bias, num_classes=5, sample_weight=weights[b])
        assert set(reference) == set(replicates)
        for name, value in reference.items():
            assert float(replicates[name][b]) == pytest.approx(value, rel=1e-9, abs=1e-12), (name, b)
    whole = bootstrap_errors(features, labels, weight, bias, 12, seed=5)
    for name, values in whole.items():
        torch.testing.assert_close(replicates[name], values, rtol=1e-12, atol=1e-14)
    other_seed = bootstrap_errors(features, labels, weight, bias, 12, seed=6)
    assert not torch.equal(other_seed["nc1"], whole["nc1"])


def test_poisson_weights_are_keyed_by_the_global_index():
    indices = torch.arange(0, 300, 3)
    weights = poisson_weights(11, 4, indices)
    shuffled = torch.randperm(len(indices), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(poisson_weights(11, 4, indices[shuffled]), weights[:, shuffled], rtol=0, atol=0)
    assert not torch.equal(poisson_weights(12, 4, indices), weights)  # another key, other weights


def test_the_bootstrap_error_matches_the_spread_over_independent_draws():
    # 10 classes in 16 dimensions, 500 points: the standard deviation of each metric over 50 independent draws of
    # the points against the bootstrap error (20 replicates) averaged over 10 of those draws.
    num_classes, dim, size = 10, 16, 500
    g = torch.Generator().manual_seed(123)
    centres = 3.0 * torch.randn(num_classes, dim, generator=g, dtype=F64)
    weight = centres + 0.5 * torch.randn(num_classes, dim, generator=g, dtype=F64)
    draws = []
    for _ in range(50):
        labels = torch.randint(0, num_classes, (size,), generator=g)
        draws.append((centres[labels] + 2.0 * torch.randn(size, dim, generator=g, dtype=F64), labels))
    spread = {}
    for name in neural_collapse(*draws[0], weight):
        spread[name] = torch.tensor([neural_collapse(f, y, weight)[name] for f, y in draws]).std()
    errors = {name: [] for name in spread}
    for seed, (features, labels) in enumerate(draws[:10]):
        replicates = bootstrap_errors(features, labels, weight, None, 20, seed=seed, chunks=(size,))
        for name, values in replicates.items():
            errors[name].append(float(values.std()))
    for name, value in spread.items():
        ratio = sum(errors[name]) / len(errors[name]) / float(value)
        assert 0.7 < ratio < 1.4, f"{name}: bootstrap error / spread over draws = {ratio:.2f}"


def test_half_sampling_error_of_dse_matches_the_spread_over_independent_draws():
    # 200 points of 10 Gaussian clusters in 32 dimensions, σ = the median distance, t = 1: DSE's standard deviation
    # over 40 independent draws against the half-sampling error (8 half-samples) averaged over 12 of those draws.
    g = torch.Generator().manual_seed(0)
    centres = 2.0 * torch.randn(10, 32, generator=torch.Generator().manual_seed(9), dtype=F64)
    draws = [
        centres[torch.randint(0, 10, (200,), generator=g)] + torch.randn(200, 32, generator=g, dtype=F64)
        for _ in range(40)
    ]
    spread = torch.tensor([diffusion_spectral_entropy(z, max_points=None) for z in draws]).std()
    errors = [
        half_sample_errors(
            lambda i, z=z: {"dse": diffusion_spectral_entropy(z[i], max_points=None)},
            200,
            8,
            torch.Generator().manual_seed(seed),
        )["dse"]
        for seed, z in enumerate(draws[:12])
    ]
    ratio = sum(errors) / len(errors) / float(spread)
    assert 0.7 < ratio < 1.4, f"half-sampling error / spread over draws = {ratio:.2f}"
