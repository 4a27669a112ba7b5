"""Neural collapse metrics: a simplex ETF, a float64 NumPy re-computation, invariances, streaming, two ranks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lightning_regs.functional.neural_collapse import NeuralCollapseAccumulator, neural_collapse
from tests.helpers.ddp import run_in_ddp

METRICS = (
    "nc1",
    "nc1_trace",
    "nc2",
    "nc2_equinorm",
    "nc2_equiangle",
    "nc2_max_angle",
    "nc3",
    "nc4",
    "accuracy",
    "cdnv",
)


def simplex_etf(num_classes: int, dim: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """``K`` class means forming a simplex ETF, rotated into ``dim`` dimensions."""
    basis = torch.linalg.qr(torch.randn(dim, num_classes, generator=generator, dtype=torch.float64))[0]
    return scale * (torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes) @ basis.T


def random_problem(seed: int, num_classes: int = 6, dim: int = 9, size: int = 150):
    """Unbalanced labels (every class present), features with a class signal, a random classifier."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat(
        [torch.arange(num_classes), torch.randint(0, num_classes, (size - num_classes,), generator=generator)]
    )
    means = 2.0 * torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
    features = means[labels] + torch.randn(size, dim, generator=generator, dtype=torch.float64)
    weight = torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
    bias = torch.randn(num_classes, generator=generator, dtype=torch.float64)
    return features, labels, weight, bias


def numpy_reference(features, labels, weight, bias) -> dict[str, float]:
    """Every metric from its textbook definition in float64 NumPy: explicit Σ_W and Σ_B, eigh for the pseudo-inverse."""
    h, y, W, b = (np.asarray(t, dtype=np.float64) for t in (features, labels, weight, bias))
    y = y.astype(int)
    classes = np.unique(y)
    K, n = len(classes), len(y)
    mu = np.stack([h[y == k].mean(axis=0) for k in classes])
    mu_g = h.mean(axis=0)
    M = mu - mu_g
    Sw = (
        sum(
            np.outer(h[i] - mu[np.searchsorted(classes, y[i])], h[i] - mu[np.searchsorted(classes, y[i])])
            for i in range(n)
        )
        / n
    )
    Sb = M.T @ M / K
    values, vectors = np.linalg.eigh(Sb)
    top = np.argsort(values)[::-1][: min(K - 1, h.shape[1])]
    Sb_pinv = vectors[:, top] @ np.diag(1.0 / values[top]) @ vectors[:, top].T
    E = (np.eye(K) - np.ones((K, K)) / K) / math.sqrt(K - 1)
    G = M @ M.T
    WM = W[classes] @ M.T
    norms = np.linalg.norm(M, axis=1)
    cos = (M @ M.T) / np.outer(norms, norms)
    pairs = cos[np.triu_indices(K, 1)]
    predicted = np.argmax(h @ W.T + b, axis=1)
    nearest = classes[np.argmin(((h[:, None, :] - mu[None]) ** 2).sum(-1), axis=1)]
    var = np.array([((h[y == k] - mu[j]) ** 2).sum(axis=1).mean() for j, k in enumerate(classes)])
    i, j = np.triu_indices(K, 1)
    return {
        "nc1": np.trace(Sw @ Sb_pinv) / K,
        "nc1_trace": np.trace(Sw) / np.trace(Sb),
        "nc2": np.linalg.norm(G / np.linalg.norm(G) - E),
        "nc2_equinorm": norms.std(ddof=1) / norms.mean(),
        "nc2_equiangle": pairs.std(ddof=1),
        "nc2_max_angle": np.abs(pairs + 1 / (K - 1)).mean(),
        "nc3": np.linalg.norm(WM / np.linalg.norm(WM) - E),
        "nc4": np.mean(predicted != nearest),
        "accuracy": np.mean(predicted == y),
        "cdnv": np.mean((var[i] + var[j]) / (2 * ((mu[i] - mu[j]) ** 2).sum(axis=1))),
    }


def test_an_exact_simplex_etf_has_collapsed():
    generator = torch.Generator().manual_seed(0)
    means = simplex_etf(5, 16, scale=3.0, generator=generator)
    labels = torch.arange(5).repeat(12)
    features = means[labels] + 1e-6 * torch.randn(60, 16, generator=generator, dtype=torch.float64)
    metrics = neural_collapse(features, labels, weight=means, bias=torch.zeros(5))
    assert metrics["nc1"] < 1e-10 and metrics["nc1_trace"] < 1e-10 and metrics["cdnv"] < 1e-10
    assert max(metrics[name] for name in ("nc2", "nc2_equinorm", "nc2_equiangle", "nc2_max_angle", "nc3")) < 1e-5
    assert metrics["nc4"] == 0.0 and metrics["accuracy"] == 1.0
    # The same class means with class-agnostic spread, and a classifier that is not their dual, are far from it.
    spread = neural_collapse(means[labels] + torch.randn(60, 16, generator=generator, dtype=torch.float64), labels,
                             weight=torch.randn(5, 16, generator=generator, dtype=torch.float64))  # fmt: skip
    assert spread["nc1"] > 0.1 and spread["nc1_trace"] > 0.1 and spread["nc3"] > 0.5 and spread["nc2"] > 1e-3


@pytest.mark.parametrize(("num_classes", "dim"), [(6, 9), (10, 4), (3, 20)])
@pytest.mark.parametrize("seed", [0, 1])
def test_every_metric_equals_a_float64_numpy_recomputation(seed, num_classes, dim):
    features, labels, weight, bias = random_problem(seed, num_classes, dim)
    ours = neural_collapse(features, labels, weight=weight, bias=bias)
    reference = numpy_reference(features, labels, weight, bias)
    assert sorted(ours) == sorted(METRICS)
    for name in METRICS:
        assert ours[name] == pytest.approx(reference[name], rel=1e-9, abs=1e-12), name


def test_classes_without_samples_are_left_out():
    features, labels, weight, bias = random_problem(0, num_classes=6)
    present = labels < 4  # classes 4 and 5 have no sample; the classifier still has 6 rows
    ours = neural_collapse(features[present], labels[present], weight=weight, bias=bias)
    reference = numpy_reference(features[present], labels[present], weight, bias)
    for name in METRICS:
        assert ours[name] == pytest.approx(reference[name], rel=1e-9, abs=1e-12), name


def test_nc1_and_the_other_ratios_do_not_depend_on_the_scale_of_the_features():
    features, labels, weight, _ = random_problem(3)
    base = neural_collapse(features, labels, weight=weight)
    scaled = neural_collapse(1000.0 * features, labels, weight=weight)
    for name in ("nc1", "nc1_trace", "nc2", "nc2_equinorm", "nc2_equiangle", "nc3", "cdnv"):
        assert scaled[name] == pytest.approx(base[name], rel=1e-9), name
    shifted = neural_collapse(features + 50.0, labels)  # a common offset changes nothing either
    assert shifted["nc1"] == pytest.approx(base["nc1"], rel=1e-7)


def _stream(features, labels, weight, bias, boundaries) -> NeuralCollapseAccumulator:
    accumulator = NeuralCollapseAccumulator(weight.shape[0])
    edges = [0, *boundaries, len(labels)]
    for begin, end in itertools.pairwise(edges):
        accumulator.update(features[begin:end], labels[begin:end])
    accumulator.sync()
    for begin, end in itertools.pairwise(edges):
        accumulator.update_ncc(features[begin:end], labels[begin:end], weight, bias)
    return accumulator


@pytest.mark.parametrize("split_seed", range(5))
def test_streaming_over_any_batch_split_equals_one_pass(split_seed):
    features, labels, weight, bias = random_problem(1, size=97)
    generator = torch.Generator().manual_seed(split_seed)
    cuts = sorted(torch.randint(0, 98, (int(torch.randint(1, 20, (1,), generator=generator)),), generator=generator))
    boundaries = [int(c) for c in cuts]  # repeated cuts give empty batches; small batches miss classes
    streamed = _stream(features, labels, weight, bias, boundaries)
    one_pass = _stream(features, labels, weight, bias, [])
    torch.testing.assert_close(streamed.means, one_pass.means, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(streamed.scatter, one_pass.scatter, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(streamed.class_scatter, one_pass.class_scatter, rtol=1e-11, atol=1e-11)
    assert torch.equal(streamed.counts, one_pass.counts) and torch.equal(streamed.ncc, one_pass.ncc)
    ours, reference = streamed.compute(weight), one_pass.compute(weight)
    for name in METRICS:
        assert ours[name] == pytest.approx(reference[name], rel=1e-10, abs=1e-13), name


def test_merging_accumulators_in_either_order_equals_one_pass():
    features, labels, weight, _ = random_problem(2)
    parts = []
    for rows in (slice(0, 40), slice(40, 41), slice(41, None)):
        part = NeuralCollapseAccumulator(6)
        part.update(features[rows], labels[rows])
        parts.append(part)
    forward = NeuralCollapseAccumulator(6).merge(parts[0]).merge(parts[1]).merge(parts[2])
    backward = NeuralCollapseAccumulator(6).merge(parts[2]).merge(parts[1]).merge(parts[0])
    reference = neural_collapse(features, labels, weight=weight)
    for merged in (forward, backward):
        metrics = merged.compute(weight)
        for name in ("nc1", "nc1_trace", "nc2", "nc3", "cdnv"):
            assert metrics[name] == pytest.approx(reference[name], rel=1e-10), name


def _on_rank(rank: int, world_size: int) -> dict:
    features, labels, weight, bias = random_problem(4, size=37)
    accumulator = NeuralCollapseAccumulator(6)
    mine = slice(rank, None, world_size)  # 19 rows on rank 0, 18 on rank 1
    for begin in range(0, 19, 7):
        chunk = torch.arange(37)[mine][begin : begin + 7]
        accumulator.update(features[chunk], labels[chunk])
    accumulator.sync()
    accumulator.update_ncc(features[mine], labels[mine], weight, bias)
    accumulator.sync()
    return {"metrics": accumulator.compute(weight), "means": accumulator.means, "scatter": accumulator.scatter}


@pytest.mark.slow
def test_two_ranks_equal_one_process():
    rank0, rank1 = run_in_ddp(_on_rank)
    assert torch.equal(rank0["scatter"], rank1["scatter"]) and rank0["metrics"] == rank1["metrics"]  # same bits
    features, labels, weight, bias = random_problem(4, size=37)
    reference = neural_collapse(features, labels, weight=weight, bias=bias)
    for name in METRICS:
        assert rank0["metrics"][name] == pytest.approx(reference[name], rel=1e-10, abs=1e-13), name


def test_bad_input_is_named():
    accumulator = NeuralCollapseAccumulator(3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        accumulator.update(torch.zeros(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="soft targets"):
        accumulator.update(torch.zeros(2, 4), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"features \(B, d\)"):
        accumulator.update(torch.zeros(2, 4, 4), torch.tensor([0, 1]))
    accumulator.update(torch.randn(4, 4), torch.tensor([0, 0, 0, 0]))
    with pytest.raises(ValueError, match="at least two classes"):
        accumulator.compute()
    accumulator.sync()
    with pytest.raises(RuntimeError, match="start a new accumulator"):
        accumulator.update(torch.randn(1, 4), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"\(num_classes, dim\)"):
        accumulator.update_ncc(torch.randn(1, 4), torch.tensor([1]), weight=torch.randn(3, 5))
