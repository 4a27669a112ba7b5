"""The information-plane estimators against their equations, closed forms, saturation and bounds."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_regs.functional import (
    adaptive_bin_codes,
    adaptive_binning,
    kde_entropy_upper,
    kde_upper,
    knn_entropy,
    lossy_knn,
)
from lightning_regs.models import MLP


def gaussian(n: int, d: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def clusters(n: int, num_classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points in ``num_classes`` tight clusters 100 apart (balanced), with their class ids."""
    labels = torch.arange(n) % num_classes
    centres = 100.0 * torch.eye(num_classes, dtype=torch.float64)
    return centres[labels] + gaussian(n, num_classes, seed, 0.5), labels


def plug_in_mutual_information(codes: torch.Tensor, labels: torch.Tensor) -> float:
    """Σ p(t, y) log2(p(t, y) / (p(t) p(y))) from the joint counts: the definition, not H(T) − H(T|Y)."""
    ids = torch.unique(codes, dim=0, return_inverse=True)[1]
    joint = torch.zeros(int(ids.max()) + 1, int(labels.max()) + 1, dtype=torch.float64)
    joint.index_put_((ids, labels), torch.ones(len(ids), dtype=torch.float64), accumulate=True)
    joint /= joint.sum()
    outer = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    mask = joint > 0
    return float((joint[mask] * torch.log2(joint[mask] / outer[mask])).sum())


# -- adaptive binning ------------------------------------------------------------------------------------------------
def test_an_injective_layer_saturates_at_log2_n_and_a_constant_layer_gives_zero():
    n = 200
    wide = gaussian(n, 12, 0)  # 12 units of 30 bins: every point its own code
    assert adaptive_binning(wide, torch.arange(n) % 4).ixt == pytest.approx(math.log2(n), abs=1e-12)
    narrow = torch.relu(gaussian(n, 1, 1))  # one unit: at most 30 codes, far below log2 200
    assert adaptive_binning(narrow, torch.arange(n) % 4, activation="relu").ixt <= math.log2(30) + 1e-12
    for activation in ("relu", "tanh", None):
        assert adaptive_binning(torch.zeros(n, 5), torch.arange(n) % 4, activation=activation) == (0.0, 0.0)


def test_i_t_y_is_the_plug_in_mutual_information_of_codes_and_labels_and_at_most_log2_k():
    t, labels = torch.relu(gaussian(300, 2, 2)), torch.randint(0, 5, (300,), generator=torch.Generator().manual_seed(3))
    codes = adaptive_bin_codes(t, num_bins=4, activation="relu")
    point = adaptive_binning(t, labels, num_bins=4, activation="relu")
    assert point.ity == pytest.approx(plug_in_mutual_information(codes, labels), abs=1e-12)
    assert 0 < point.ity < math.log2(5)
    separated, ids = clusters(300, 5)
    assert adaptive_binning(separated, ids).ity == pytest.approx(math.log2(5), abs=1e-12)  # H(Y), the most


def test_the_edges_sit_at_quantiles_of_the_distinct_values():
    # Many repeated zeros (dead units) and a long tail: each bin must hold about as many *distinct* values.
    values = torch.cat([torch.zeros(5000), torch.arange(1, 601, dtype=torch.float64) ** 2]).reshape(-1, 1)
    codes = adaptive_bin_codes(values, num_bins=30, activation="relu").flatten()
    distinct_per_bin = torch.bincount(codes[5000:], minlength=30)  # the 600 distinct non-zero values
    assert int(codes[:5000].max()) == 0  # the zeros share the first bin
    assert int(distinct_per_bin.max() - distinct_per_bin.min()) <= 2  # 600/30 = 20 each, ± the shared edges
    # tanh: the lowest edge −1.000001 sits below a saturated −1, whose point is in bin 0
    tanh_codes = adaptive_bin_codes(torch.tensor([[-1.0], [0.0], [1.0]]), num_bins=2, activation="tanh")
    assert tanh_codes.flatten().tolist() == [0, 1, 1]
    # the lowest edge is one of the values the quantiles are taken of: 0 for ReLU moves the median of {1, 2, 3, 4}
    positive = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    assert adaptive_bin_codes(positive, num_bins=2, activation="relu").flatten().tolist() == [0, 1, 1, 1]  # e_1 = 2
    assert adaptive_bin_codes(positive, num_bins=2).flatten().tolist() == [0, 0, 1, 1]  # e_0 = 1: e_1 = 2.5


def test_binning_refuses_values_outside_the_activation_range_and_bad_arguments():
    with pytest.raises(ValueError, match="activation='relu' bins values ≥ 0"):
        adaptive_binning(torch.tensor([[-0.5], [1.0]]), torch.tensor([0, 1]), activation="relu")
    with pytest.raises(ValueError, match="activation='tanh'"):
        adaptive_binning(torch.tensor([[2.0], [1.0]]), torch.tensor([0, 1]), activation="tanh")
    with pytest.raises(ValueError, match="activation must be"):
        adaptive_binning(torch.ones(2, 1), torch.tensor([0, 1]), activation="sigmoid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_bins"):
        adaptive_binning(torch.ones(2, 1), torch.tensor([0, 1]), num_bins=0)
    with pytest.raises(ValueError, match="integer class ids, one per point"):
        adaptive_binning(torch.ones(3, 1), torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        kde_upper(torch.ones(3, 1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="non-finite"):
        kde_upper(torch.tensor([[math.nan], [1.0]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="sigma"):
        kde_upper(torch.ones(3, 1), torch.tensor([0, 1, 1]), sigma=0.0)


# -- KDE upper bound --------------------------------------------------------------------------------------------------
def test_the_kde_bound_of_a_gaussian_sample_against_the_smoothed_gaussians_entropy():
    # T ~ N(0, s²I_d) plus noise σ: T + σZ ~ N(0, (s² + σ²)I), entropy (d/2) log2(2πe(s² + σ²)). The pairwise bound
    # is above it; at large N it tends to that entropy + (d/2) s²/(s² + σ²) nats (the bound's slack for overlapping
    # components: −E log of the smoothed density at the centres, + d/2), tight when s ≪ σ. Tolerances: 0.03 bits at
    # N = 2000 (what the finite sample moves it by: 0.011 and 0.002 with these seeds).
    d, sigma = 2, 1.0
    for s, seed in ((1.0, 0), (0.1, 1)):
        closed = 0.5 * d * math.log2(2 * math.pi * math.e * (s**2 + sigma**2))
        limit = closed + 0.5 * d * s**2 / (s**2 + sigma**2) / math.log(2)
        bound = kde_entropy_upper(gaussian(2000, d, seed, s), sigma)
        assert bound > closed
        assert bound == pytest.approx(limit, abs=0.03)
    assert kde_entropy_upper(gaussian(2000, d, 1, 0.1), sigma) == pytest.approx(
        0.5 * d * math.log2(2 * math.pi * math.e * (0.01 + 1.0)), abs=0.03
    )


def test_kde_i_x_t_saturates_at_log2_n_and_i_t_y_is_at_most_log2_k():
    t, labels = clusters(120, 4)
    point = kde_upper(t, labels)  # σ = 0.01: every point many σ from every other
    assert point.ixt == pytest.approx(math.log2(120), abs=1e-9)
    assert point.ity == pytest.approx(math.log2(4), abs=1e-9)
    for sigma in (0.3, 1.0, 3.0, 30.0):  # overlapping components: below both limits
        point = kde_upper(t, labels, sigma=sigma)
        assert point.ixt <= math.log2(120) + 1e-9 and point.ity <= math.log2(4) + 1e-9
    random_labels = torch.randint(0, 4, (120,), generator=torch.Generator().manual_seed(0))
    assert kde_upper(gaussian(120, 3, 5), random_labels, sigma=1.0).ity <= math.log2(4)


# -- kNN and the lossy estimator -------------------------------------------------------------------------------------
def test_the_knn_entropy_of_a_gaussian_against_its_closed_form():
    # N(0, Σ) in 3 dimensions: (1/2) log2((2πe)³ det Σ). Tolerance 0.1 bits at N = 2000 (the estimator's bias and
    # spread there: 0.02–0.06 bits in 2–4 dimensions).
    covariance = torch.tensor([[2.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 0.5]], dtype=torch.float64)
    x = gaussian(2000, 3, 7) @ torch.linalg.cholesky(covariance).T
    closed = 0.5 * math.log2((2 * math.pi * math.e) ** 3 * float(torch.linalg.det(covariance)))
    assert knn_entropy(x) == pytest.approx(closed, abs=0.1)
    assert knn_entropy(4.0 * x) == pytest.approx(knn_entropy(x) + 3 * math.log2(4.0), abs=1e-9)  # exact scaling


def test_lossy_knn_of_a_gaussian_layer_is_the_gaussian_channels_information():
    # T ~ N(0, I_2), ε = 0.1·std(T) ≈ 0.1: I(X; T + εZ) = Σ_i ½ log2(1 + 1/ε²) over the 2 directions (6.66 bits).
    t = gaussian(2000, 2, 11)
    epsilon = 0.1 * float(t.std())
    closed = 2 * 0.5 * math.log2(1 + 1 / epsilon**2)
    point = lossy_knn(t, torch.arange(2000) % 3, generator=torch.Generator().manual_seed(0))
    assert point.ixt == pytest.approx(closed, abs=0.15)
    assert abs(point.ity) < 0.1  # labels independent of T: the estimator's bias (0.053 bits with this seed)


def test_i_t_y_is_at_most_log2_k_for_every_estimator():
    k_classes = 4
    t, labels = clusters(160, k_classes)
    shuffled = labels[torch.randperm(160, generator=torch.Generator().manual_seed(1))]
    n_y = torch.bincount(labels).double()  # float64: ψ in float32 is off by ~1e-7
    psi = torch.special.digamma
    # kNN: a point's k-th neighbour among all points is no farther than within its class, so I(T';Y) is at most
    # (ψ(N) − Σ p(y) ψ(N_y)) / ln 2, above H(Y) = log2 K by less than (K − ½) / (N ln 2).
    knn_bound = float(psi(torch.tensor(160.0, dtype=torch.float64)) - (n_y / 160 * psi(n_y)).sum()) / math.log(2)
    assert math.log2(k_classes) < knn_bound < math.log2(k_classes) + (k_classes - 0.5) / (160 * math.log(2))
    for ids in (labels, shuffled):
        assert adaptive_binning(t, ids).ity <= math.log2(k_classes) + 1e-12
        assert kde_upper(t, ids).ity <= math.log2(k_classes) + 1e-12
        assert lossy_knn(t, ids, generator=torch.Generator().manual_seed(0)).ity <= knn_bound + 1e-12
    separated = lossy_knn(t, labels, generator=torch.Generator().manual_seed(0))
    assert separated.ity == pytest.approx(math.log2(k_classes), abs=0.05)  # the classes are told apart


def test_lossy_knn_draws_only_from_its_generator_and_refuses_small_classes_and_bad_arguments():
    t, labels = gaussian(60, 4, 0), torch.arange(60) % 3
    before = torch.random.get_rng_state()
    first = lossy_knn(t, labels, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert lossy_knn(t, labels, generator=torch.Generator().manual_seed(5)) == first
    assert lossy_knn(t, labels, generator=torch.Generator().manual_seed(6)) != first
    assert lossy_knn(torch.ones(60, 4), labels) == (0.0, 0.0)  # a constant layer carries nothing
    with pytest.raises(ValueError, match="class 2 needs more than k = 5 points and has 3"):
        lossy_knn(t[:21], torch.cat([torch.zeros(9), torch.ones(9), 2 * torch.ones(3)]).long())
    for kwargs, match in (({"noise_ratio": 0.0}, "noise_ratio"), ({"num_components": 0}, "num_components"),
                          ({"k": 0}, "k \\(the neighbour"), ({"k": 60}, "more than k = 60")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            lossy_knn(t, labels, **kwargs)
    with pytest.raises(ValueError, match="coincide"):
        knn_entropy(torch.zeros(10, 2))


# -- any split of the probe into batches ------------------------------------------------------------------------------
def test_features_computed_in_chunks_give_the_same_estimates():
    torch.manual_seed(0)
    layers = MLP(in_features=64, num_classes=10, width=4, depth=3).layers.eval()  # 4 units: codes repeat
    images, labels = torch.randn(151, 1, 8, 8), torch.arange(151) % 10
    with torch.no_grad():
        splits = [torch.cat([layers(images[i : i + size]) for i in range(0, 151, size)]) for size in (151, 64, 7, 1)]
    assert not all(torch.equal(splits[0], other) for other in splits[1:])  # float32 rounding differs by chunk

    def estimates(t: torch.Tensor) -> list[float]:
        return [
            *adaptive_binning(t, labels, num_bins=8, activation="relu"),
            *kde_upper(t, labels, sigma=0.1),
            *lossy_knn(t, labels, k=3, generator=torch.Generator().manual_seed(0)),
        ]

    reference = estimates(splits[0])
    assert reference[0] < math.log2(151)  # not saturated: the binning has codes to share
    for other in splits[1:]:
        assert estimates(other) == pytest.approx(reference, rel=1e-6, abs=1e-9)
