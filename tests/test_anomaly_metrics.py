import bisect

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score

from lightning_regs.functional.anomaly import (
    auroc_from_counts,
    binned_auroc_counts,
    binned_auroc_error_bound,
    image_auroc,
    pixel_auroc,
    rank_auroc,
)
from lightning_regs.functional.anomaly_metrics import (
    aupro,
    average_precision,
    f1_max,
    pixel_average_precision,
    pixel_f1_max,
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


# --- average precision, F1-max and AUPRO (lightning_regs.functional.anomaly_metrics) -----------------------------


def test_average_precision_equals_sklearn_on_random_and_tied_scores():
    for seed in range(6):
        for ties in (False, True):
            scores, labels = random_case(seed, ties=ties)
            expected = average_precision_score(labels.numpy(), scores.double().numpy())
            assert float(average_precision(scores, labels)) == pytest.approx(expected, abs=1e-12), (seed, ties)
    # a few big tie groups, and raw scores far outside [0, 1]
    scores, labels = random_case(7, size=500)
    coarse = (scores / 4).round() * 1e4
    expected = average_precision_score(labels.numpy(), coarse.double().numpy())
    assert float(average_precision(coarse, labels)) == pytest.approx(expected, abs=1e-12)


def sklearn_f1_max(scores, labels):
    precision, recall, _ = precision_recall_curve(labels.numpy(), scores.double().numpy())
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return f1[:-1].max()  # the last point (precision 1, recall 0) has no threshold


def test_f1_max_equals_the_best_f1_of_sklearns_precision_recall_curve_and_its_threshold_reaches_it():
    for seed in range(6):
        for ties in (False, True):
            scores, labels = random_case(seed, ties=ties)
            best = f1_max(scores, labels)
            assert float(best.value) == pytest.approx(sklearn_f1_max(scores, labels), abs=1e-12), (seed, ties)
            at_threshold = f1_score(labels.numpy(), (scores.double() >= best.threshold).numpy())
            assert at_threshold == pytest.approx(float(best.value), abs=1e-12)
            # the smallest threshold reaching the maximum: every lower distinct score gives less
            for lower in scores.double().unique():
                if lower < best.threshold:
                    assert f1_score(labels.numpy(), (scores.double() >= lower).numpy()) < float(best.value) - 1e-12


def test_ap_and_f1_max_closed_forms():
    scores, labels = torch.tensor([0.1, 0.4, 0.35, 0.8], dtype=torch.float64), torch.tensor([0, 0, 1, 1])
    assert float(average_precision(scores, labels)) == pytest.approx(5 / 6, abs=1e-15)
    best = f1_max(scores, labels)  # t=0.35: TP 2, FP 1, FN 0 -> 4/5
    assert (float(best.value), float(best.threshold)) == (pytest.approx(0.8, abs=1e-15), 0.35)
    # all tied: one threshold, precision = prevalence; every sample anomalous: AP = F1 = 1
    assert float(average_precision(torch.ones(4), torch.tensor([0, 1, 0, 0]))) == 0.25
    assert float(average_precision(torch.randn(5), torch.ones(5))) == float(f1_max(torch.randn(5), torch.ones(5))[0])
    assert float(average_precision(torch.randn(5), torch.ones(5))) == 1.0
    # raw scores a float32 sigmoid would saturate keep their order
    assert float(average_precision(torch.tensor([20.0, 30.0, 40.0]), torch.tensor([0, 1, 1]))) == 1.0


def test_pixel_ap_and_f1_max_are_the_flattened_ones_and_accept_a_channel_dim():
    generator = torch.Generator().manual_seed(4)
    masks = torch.rand(3, 1, 8, 6, generator=generator) > 0.8
    maps = torch.randn(3, 1, 8, 6, generator=generator) * 10 + masks * 5
    expected_ap = average_precision_score(masks.flatten().numpy(), maps.flatten().double().numpy())
    assert float(pixel_average_precision(maps, masks.float())) == pytest.approx(expected_ap, abs=1e-12)
    assert float(pixel_average_precision(maps[:, 0], masks)) == pytest.approx(expected_ap, abs=1e-12)
    assert float(pixel_f1_max(maps, masks[:, 0]).value) == pytest.approx(
        sklearn_f1_max(maps.flatten(), masks.flatten()), abs=1e-12
    )


def official_trapezoid(x, y, x_max):
    """The MVTec AD evaluation's trapezoid(x, y, x_max): integrate up to x_max, interpolating y there."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    correction = 0.0
    if x_max not in x:
        ins = bisect.bisect(x, x_max)
        assert 0 < ins < len(x)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def rederived_aupro(maps, masks, limit=0.3):
    """AUPRO as the official evaluation defines it, by a loop over thresholds (no sorting, no cumulative sums)."""
    regions, normal_scores = [], []
    for anomaly_map, mask in zip(maps.double().numpy(), masks.numpy(), strict=True):
        labeled, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))  # one image at a time
        normal_scores.append(anomaly_map[labeled == 0])
        regions += [anomaly_map[labeled == k] for k in range(1, count + 1)]
    normal_scores = np.concatenate(normal_scores)
    fprs, pros = [0.0], [0.0]
    for threshold in np.unique(maps.double().numpy())[::-1]:  # decreasing thresholds: increasing FPR
        fprs.append(np.mean(normal_scores >= threshold))
        pros.append(np.mean([np.mean(region >= threshold) for region in regions]))
    fprs.append(1.0)
    pros.append(1.0)
    return official_trapezoid(fprs, pros, limit) / limit


def random_maps(seed, num_images=6, size=(12, 10), ties=False):
    """Maps and masks with several (8-connected) regions per defective image and two defect-free images."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.rand(num_images, *size, generator=generator) > 0.85
    masks[:2] = False  # defect-free images
    masks[2, :3, :3] = True  # one block region beside the scattered pixels
    maps = torch.randn(num_images, *size, generator=generator) + 1.2 * masks
    if ties:
        maps = (maps * 2).round()
    return maps, masks


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_aupro_equals_the_official_definition_rederived_by_a_loop_over_thresholds(seed, ties):
    maps, masks = random_maps(seed, ties=ties)
    labeled = [ndimage.label(mask, structure=np.ones((3, 3)))[1] for mask in masks.numpy()]
    assert sum(labeled) > 6 and labeled[0] == labeled[1] == 0  # several regions; defect-free images
    for limit in (0.3, 0.05, 1.0):
        expected = rederived_aupro(maps, masks, limit)
        assert float(aupro(maps, masks, fpr_limit=limit)) == pytest.approx(expected, abs=1e-12), limit
    assert float(aupro(maps[:, None], masks[:, None].float())) == pytest.approx(rederived_aupro(maps, masks), 1e-12)


def test_aupro_closed_forms():
    masks = torch.zeros(2, 6, 6, dtype=torch.bool)
    masks[0, 1:3, 1:3] = True
    masks[1, 4, 4] = True
    maps = torch.rand(2, 6, 6)
    assert float(aupro(maps + 2 * masks, masks)) == 1.0  # every anomalous pixel above every normal one
    assert float(aupro(maps - 2 * masks, masks)) == 0.0  # every normal pixel above every anomalous one
    # a jump over the limit is interpolated: normals tied at 0, a 4-pixel region half above (9), half tied (0).
    # curve (0,0) (0,0.5) (1,1): PRO(0.3) = 0.65, area 0.3 * (0.5 + 0.65) / 2, divided by 0.3 -> 0.575
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True
    tied = torch.zeros(1, 4, 4)
    tied[0, 0, :2] = 9.0
    assert float(aupro(tied, mask)) == pytest.approx(0.575, abs=1e-15)
    assert float(aupro(tied, mask, fpr_limit=1.0)) == pytest.approx(0.75, abs=1e-15)
    # 8-connectivity: diagonal pixels (0,0) and (1,1) form ONE region, (0,3) another; (0,0) and (0,3) rank on top,
    # (1,1) at the bottom: PRO = (1/2 + 1) / 2 = 0.75 until FPR 1 (4-connectivity would give (1 + 0 + 1) / 3)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 0, 3] = True
    scores = torch.rand(1, 4, 4) + 1
    scores[0, 0, 0], scores[0, 0, 3], scores[0, 1, 1] = 5.0, 6.0, -5.0
    assert float(aupro(scores, mask)) == pytest.approx(0.75, abs=1e-15)
    # regions never span two images: the last row of image 0 touches the first row of image 1 when stacked
    masks = torch.zeros(2, 3, 3, dtype=torch.bool)
    masks[0, 2, 1] = masks[1, 0, 1] = True
    scores = torch.rand(2, 3, 3)
    scores[0, 2, 1], scores[1, 0, 1] = 5.0, -5.0
    assert float(aupro(scores, masks)) == pytest.approx(0.5, abs=1e-15)


def test_a_defect_free_image_adds_only_normal_pixels():
    maps, masks = random_maps(0)
    perfect = maps.clone()
    perfect[masks] += 100  # anomalous pixels on top: AUPRO 1
    # a defect-free image scoring above everything: its pixels are the first false positives. With them a share f
    # of all normal pixels, PRO stays 0 up to FPR f, then jumps to 1: AUPRO = (0.3 - f) / 0.3
    extra = torch.full((1, *maps.shape[1:]), 1e3)
    share = extra.numel() / (extra.numel() + int((~masks).sum()))
    with_extra = aupro(torch.cat([perfect, extra]), torch.cat([masks, torch.zeros_like(extra, dtype=torch.bool)]))
    assert share < 0.3 and float(with_extra) == pytest.approx((0.3 - share) / 0.3, abs=1e-12)
    assert float(aupro(perfect, masks)) == 1.0


def test_aupro_is_unchanged_by_strictly_increasing_transforms():
    maps, masks = random_maps(1)
    maps = maps.double()
    reference = float(aupro(maps, masks))
    for transform in (lambda s: 1000 * s + 500, lambda s: s.exp(), lambda s: s**3 + s, lambda s: 1e-3 * s - 40):
        assert float(aupro(transform(maps), masks)) == pytest.approx(reference, abs=1e-12)


def test_aupro_never_exceeds_one_where_every_fpr_stays_below_the_limit():
    # anomalib#1651: most normal pixels tied at the lowest score, so the FPR jumps from ~0 to 1 at the end
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        masks = torch.rand(3, 8, 8, generator=generator) > 0.7
        maps = torch.where(masks, torch.rand(3, 8, 8, generator=generator), torch.zeros(3, 8, 8))
        maps[0, 0, 0] = 0.9 if not masks[0, 0, 0] else maps[0, 0, 0]
        for limit in (0.3, 0.01, 1.0):
            value = float(aupro(maps, masks, fpr_limit=limit))
            assert 0.0 <= value <= 1.0
            assert value == pytest.approx(rederived_aupro(maps, masks, limit), abs=1e-12)


def test_anomaly_metric_errors_are_named():
    good = torch.rand(2, 4, 4)
    mask = torch.zeros(2, 4, 4)
    mask[0, 0, 0] = 1
    with pytest.raises(ValueError, match="at least one anomalous pixel"):
        aupro(good, torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="needs normal pixels"):
        aupro(good, torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="NaN or infinite"):
        aupro(torch.full((2, 4, 4), float("nan")), mask)
    with pytest.raises(ValueError, match="same shape"):
        aupro(good[:, :3], mask)
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, 1, H, W\)"):
        aupro(good[0], mask[0])
    with pytest.raises(ValueError, match=r"must be 0 .* or 1"):
        aupro(good, mask * 2)
    with pytest.raises(ValueError, match=r"fpr_limit must be a finite number in \(0, 1\]"):
        aupro(good, mask, fpr_limit=0.0)
    with pytest.raises(ValueError, match=r"fpr_limit must be a finite number in \(0, 1\]"):
        aupro(good, mask, fpr_limit=1.5)
    for metric in (average_precision, f1_max):
        with pytest.raises(ValueError, match="at least one anomalous sample"):
            metric(torch.rand(3), torch.zeros(3))
        with pytest.raises(ValueError, match="NaN or infinite"):
            metric(torch.tensor([1.0, float("inf")]), torch.tensor([0, 1]))
        with pytest.raises(ValueError, match=r"must be 0 .* or 1"):
            metric(torch.rand(2), torch.tensor([0, 3]))
        with pytest.raises(ValueError, match="differ in size"):
            metric(torch.rand(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="same shape"):
        pixel_average_precision(good, mask[:, :2])
