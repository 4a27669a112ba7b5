import pytest
import torch
from sklearn.metrics import roc_auc_score

from lightning_regs.functional.anomaly import (
    auroc_from_counts,
    binned_auroc_counts,
    binned_auroc_error_bound,
    image_auroc,
    pixel_auroc,
    rank_auroc,
)


def random_case(seed: int, size: int = 200, ties: bool = False):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (size,), generator=generator)
    scores = torch.randn(size, generator=generator) * 3 + labels * 1.5
    if ties:
        scores = scores.round()
    return scores, labels


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_image_auroc_equals_sklearn(seed, ties):
    scores, labels = random_case(seed, ties=ties)
    assert float(image_auroc(scores, labels)) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_closed_form_small_cases():
    # 4 positive-negative pairs: (3>1), (3>2), (2=2 counts 1/2), (2>1) -> 3.5 / 4
    assert float(rank_auroc(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([0, 0, 1, 1]))) == 0.875
    assert float(rank_auroc(torch.tensor([5.0, 1.0]), torch.tensor([0, 1]))) == 0.0
    assert float(rank_auroc(torch.tensor([7.0, 7.0]), torch.tensor([True, False]))) == 0.5


@pytest.mark.parametrize(
    "transform",
    [
        lambda s: 1000 * s + 500,  # affine, far outside [0, 1]
        lambda s: 0.001 * s - 40,  # affine, all negative
        lambda s: s.exp(),  # monotone, huge range
        lambda s: s**3 + s,  # monotone, odd
        lambda s: torch.sigmoid(s),  # the map torchmetrics applies: inside [0, 1]
    ],
)
def test_monotone_transforms_and_raw_scores_leave_the_auroc_unchanged(transform):
    scores, labels = random_case(0)
    scores = scores.double()
    reference = roc_auc_score(labels, scores)
    assert float(image_auroc(transform(scores), labels)) == pytest.approx(reference, abs=1e-12)


def test_scores_that_a_float32_sigmoid_would_saturate_keep_their_order():
    # sigmoid(x) rounds to 1.0 in float32 for x above ~17: auto-sigmoided scores here would all tie (AUROC 0.5).
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    scores = torch.tensor([20.0, 21.0, 30.0, 31.0, 22.0, 40.0])
    assert torch.sigmoid(scores).unique().numel() == 1
    assert float(image_auroc(scores, labels)) == roc_auc_score(labels, scores) == 1.0


def test_pixel_auroc_equals_sklearn_on_flattened_maps_and_accepts_a_channel_dim():
    generator = torch.Generator().manual_seed(1)
    masks = torch.rand(4, 1, 9, 7, generator=generator) > 0.8
    maps = torch.randn(4, 1, 9, 7, generator=generator) * 10 + masks * 5
    expected = roc_auc_score(masks.flatten(), maps.flatten())
    assert float(pixel_auroc(maps, masks)) == pytest.approx(expected, abs=1e-12)
    assert float(pixel_auroc(maps[:, 0], masks.float())) == pytest.approx(expected, abs=1e-12)
    assert float(pixel_auroc(maps[:, 0], masks)) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        pixel_auroc(maps[:, :, :8], masks)


def test_binned_pixel_auroc_is_within_its_error_bound_and_converges():
    generator = torch.Generator().manual_seed(2)
    masks = torch.rand(6, 16, 16, generator=generator) > 0.9
    maps = torch.randn(6, 16, 16, generator=generator) + masks * 1.0
    exact = float(pixel_auroc(maps, masks))
    low, high = float(maps.min()), float(maps.max())
    errors = []
    for bins in (4, 32, 1024):
        pos, neg = binned_auroc_counts(maps, masks, bins, (low, high))
        assert int(pos.sum()) == int(masks.sum()) and int(neg.sum()) == int((~masks).sum())
        binned = float(auroc_from_counts(pos, neg))
        bound = float(binned_auroc_error_bound(pos, neg))
        assert abs(binned - exact) <= bound + 1e-12
        assert binned == pytest.approx(float(pixel_auroc(maps, masks, num_bins=bins)), abs=1e-12)
        errors.append(abs(binned - exact))
    assert errors[-1] < 1e-3 and errors[0] > errors[-1]


def test_binned_counts_stream_over_batches_and_equal_exact_when_bins_separate_values():
    generator = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 50, (300,), generator=generator).float()
    labels = (torch.rand(300, generator=generator) < scores / 60).long()
    streamed = [binned_auroc_counts(scores[i : i + 64], labels[i : i + 64], 50, (0.0, 50.0)) for i in range(0, 300, 64)]
    pos = sum(part[0] for part in streamed)
    neg = sum(part[1] for part in streamed)
    one_shot = binned_auroc_counts(scores, labels, 50, (0.0, 50.0))
    assert torch.equal(pos, one_shot[0]) and torch.equal(neg, one_shot[1])
    # one integer per bin: binning loses nothing, ties count 1/2 in both
    assert float(auroc_from_counts(pos, neg)) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    # scores outside the range land in the end bins
    pos, neg = binned_auroc_counts(torch.tensor([-5.0, 99.0]), torch.tensor([0, 1]), 3, (0.0, 1.0))
    assert pos.tolist() == [0, 0, 1] and neg.tolist() == [1, 0, 0]


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        (torch.tensor([1.0, 2.0]), torch.tensor([1, 1]), "both normal and anomalous"),
        (torch.tensor([1.0, 2.0]), torch.tensor([0, 2]), "must be 0 .* or 1"),
        (torch.tensor([1.0, float("nan")]), torch.tensor([0, 1]), "NaN or infinite"),
        (torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 1]), "differ in size"),
        (torch.ones(2, 2), torch.tensor([0, 1]), "one score and one label per image"),
    ],
)
def test_bad_inputs_are_named(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        image_auroc(scores, labels)


def test_binned_argument_errors():
    with pytest.raises(ValueError, match="num_bins must be at least 1"):
        binned_auroc_counts(torch.ones(2), torch.tensor([0, 1]), 0, (0.0, 1.0))
    with pytest.raises(ValueError, match="low <= high"):
        binned_auroc_counts(torch.ones(2), torch.tensor([0, 1]), 3, (1.0, 0.0))
    with pytest.raises(ValueError, match="both normal and anomalous"):
        auroc_from_counts(torch.tensor([0, 0]), torch.tensor([1, 2]))
