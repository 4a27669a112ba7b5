"""MixUp and CutMix's functional core against closed forms and torchvision's ``v2.MixUp`` / ``v2.CutMix``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from lightning_regs.functional.mixing import (
    box_masks,
    cutmix_boxes,
    draw_mix,
    interpolate_loss,
    mix_inputs,
    mix_targets,
    mixed_accuracy,
)


def test_lambda_one_is_the_plain_batch():
    x, t = torch.randn(5, 3, 4, 4), torch.eye(5)
    partner = torch.tensor([4, 3, 2, 1, 0])
    ones = torch.ones(5)
    assert torch.equal(mix_inputs(x, partner, ones), x)
    assert torch.equal(mix_targets(t, partner, ones), t)


def test_mixed_targets_are_distributions_and_the_right_convex_combination():
    t = torch.softmax(torch.randn(6, 4), 1)
    partner, lam = torch.tensor([1, 0, 3, 2, 5, 4]), torch.rand(6)
    mixed = mix_targets(t, partner, lam)
    assert torch.allclose(mixed.sum(1), torch.ones(6)) and bool((mixed >= 0).all())
    for i in range(6):
        assert torch.allclose(mixed[i], lam[i] * t[i] + (1 - lam[i]) * t[partner[i]])


def test_matches_torchvision_mixup_on_the_same_lambda_and_pairing():
    images, labels = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    torch.manual_seed(7)
    expected_images, expected_targets = v2.MixUp(alpha=0.4, num_classes=5)(images.clone(), labels)
    torch.manual_seed(7)
    lam = float(torch.distributions.Beta(torch.tensor([0.4]), torch.tensor([0.4])).sample(()))
    partner = torch.arange(6).roll(1)  # torchvision pairs row i with row i - 1
    lams = torch.full((6,), lam)
    torch.testing.assert_close(mix_inputs(images, partner, lams), expected_images)
    torch.testing.assert_close(mix_targets(F.one_hot(labels, 5).float(), partner, lams), expected_targets)


def _torchvision_cutmix_box(lam: float, height: int, width: int) -> tuple[int, int, int, int]:
    """torchvision's v2.CutMix box, re-derived: (y1, y2, x1, x2) from the centre it draws after λ."""
    r_x, r_y = torch.randint(width, size=(1,)), torch.randint(height, size=(1,))
    r = 0.5 * math.sqrt(1.0 - lam)
    half_w, half_h = int(r * width), int(r * height)
    x1, y1 = int(torch.clamp(r_x - half_w, min=0)), int(torch.clamp(r_y - half_h, min=0))
    x2, y2 = int(torch.clamp(r_x + half_w, max=width)), int(torch.clamp(r_y + half_h, max=height))
    return y1, y2, x1, x2


@pytest.mark.parametrize("seed", range(6))
def test_matches_torchvision_cutmix_on_the_same_box_and_pairing(seed):
    images, labels = torch.rand(4, 3, 9, 7), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(seed)
    expected_images, expected_targets = v2.CutMix(alpha=1.0, num_classes=4)(images.clone(), labels)
    torch.manual_seed(seed)
    lam = float(torch.distributions.Beta(torch.tensor([1.0]), torch.tensor([1.0])).sample(()))
    box = torch.tensor([_torchvision_cutmix_box(lam, 9, 7)] * 4)
    masks = box_masks(box, 9, 7)
    partner = torch.arange(4).roll(1)
    corrected = masks.mean(dim=(1, 2, 3))
    torch.testing.assert_close(mix_inputs(images, partner, masks), expected_images)
    torch.testing.assert_close(mix_targets(F.one_hot(labels, 4).float(), partner, corrected), expected_targets)


def test_cutmix_boxes_follow_the_area_rule_before_clipping_and_lambda_is_the_share_left():
    rng = np.random.default_rng(0)
    lam = torch.rand(200, dtype=torch.float64)
    boxes = cutmix_boxes(lam, 32, 32, rng)
    y1, y2, x1, x2 = boxes.unbind(1)
    assert bool(((y1 >= 0) & (y2 <= 32) & (x1 >= 0) & (x2 <= 32) & (y1 <= y2) & (x1 <= x2)).all())
    half = (torch.sqrt(1 - lam) * 16).floor()
    centre_inside = (y2 - y1 == 2 * half) & (x2 - x1 == 2 * half)  # boxes not clipped keep their full size
    assert centre_inside.any()
    masks = box_masks(boxes, 32, 32)
    area = ((y2 - y1) * (x2 - x1)).double()
    torch.testing.assert_close(masks.mean(dim=(1, 2, 3)).double(), 1 - area / 1024)
    unclipped = 1 - (2 * half) ** 2 / 1024
    assert torch.allclose(unclipped[centre_inside], 1 - area[centre_inside] / 1024)
    # whole-pixel half sides: the box is at most 2 pixels narrower per side than sqrt(1 - λ)·32, never larger
    assert bool((unclipped >= lam - 1e-12).all()) and bool((unclipped - lam <= 4 * 32 / 1024).all())


def test_cutmix_pastes_the_partner_inside_the_box_and_keeps_the_row_outside():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    masks = box_masks(torch.tensor([[1, 4, 2, 5], [0, 0, 0, 0]]), 6, 6)
    mixed = mix_inputs(x, torch.tensor([1, 0]), masks)
    assert torch.equal(mixed[0, :, 1:4, 2:5], x[1, :, 1:4, 2:5])
    outside = masks[0].bool()
    assert torch.equal(mixed[0][outside], x[0][outside]) and torch.equal(mixed[1], x[1])


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("alphas", [(0.2, 0.0), (0.0, 1.0), (0.8, 1.0)])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_draws_pair_every_row_with_a_permutation_at_any_batch_size(per_sample, alphas, batch_size):
    draw = draw_mix(batch_size, np.random.default_rng(1), *alphas, 0.5, per_sample)
    assert sorted(draw.partner.tolist()) == list(range(batch_size))
    assert bool(((draw.lam >= 0) & (draw.lam <= 1)).all())
    if not per_sample:
        assert len(set(draw.lam.tolist())) == 1 and len(set(draw.cutmix.tolist())) == 1
    if alphas[1] == 0:
        assert not draw.cutmix.any()
    if alphas[0] == 0:
        assert draw.cutmix.all()


def test_switch_prob_is_the_share_of_cutmix_rows():
    draw = draw_mix(4000, np.random.default_rng(2), 0.8, 1.0, 0.3, per_sample=True)
    assert abs(float(draw.cutmix.float().mean()) - 0.3) < 0.03


def test_lambda_follows_beta_alpha_alpha():
    lam = draw_mix(20000, np.random.default_rng(3), 0.4, 0.0, 0.0, per_sample=True).lam.double()
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1))
    assert abs(float(lam.mean()) - 0.5) < 0.01 and abs(float(lam.var()) - 1 / (4 * 1.8)) < 0.005


def test_interpolate_loss_equals_the_mixed_target_cross_entropy():
    logits, labels = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 1])
    partner, lam = torch.tensor([2, 0, 1, 4, 3]), torch.full((5,), 0.3)
    interpolated = interpolate_loss(lambda t: F.cross_entropy(logits, t), labels, partner, lam)
    soft = mix_targets(F.one_hot(labels, 4).float(), partner, lam)
    torch.testing.assert_close(interpolated, F.cross_entropy(logits, soft))
    per_row = torch.rand(5)
    rowwise = interpolate_loss(lambda t: F.cross_entropy(logits, t, reduction="none"), labels, partner, per_row)
    soft = mix_targets(F.one_hot(labels, 4).float(), partner, per_row)
    torch.testing.assert_close(rowwise, F.cross_entropy(logits, soft))
    with pytest.raises(ValueError, match="reduction='none'"):
        interpolate_loss(lambda t: F.cross_entropy(logits, t), labels, partner, per_row)


def test_mixed_accuracy_credits_both_labels_by_lambda():
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    labels, partner, lam = torch.tensor([0, 2, 1]), torch.tensor([1, 2, 0]), torch.tensor([0.6, 0.6, 0.6])
    # row 0 predicts 0 (own): 0.6; row 1 predicts 1 (partner row 2's label 1): 0.4; row 2 predicts 2: neither
    assert mixed_accuracy(logits, labels, partner, lam).tolist() == pytest.approx([0.6, 0.4, 0.0])
    assert mixed_accuracy(logits, labels, None, None).tolist() == [1.0, 0.0, 0.0]


def _official_cutmix(images: torch.Tensor, lam: float, partner: torch.Tensor, cx: int, cy: int):
    """CutMix's released train loop (clovaai/CutMix-PyTorch@9dc8245, ``rand_bbox`` + λ correction), re-derived."""
    size = images.shape
    width, height = size[2], size[3]  # the official names: dim 2 is called W, dim 3 H
    cut_rat = np.sqrt(1.0 - lam)
    cut_w, cut_h = int(width * cut_rat), int(height * cut_rat)
    bbx1, bby1 = np.clip(cx - cut_w // 2, 0, width), np.clip(cy - cut_h // 2, 0, height)
    bbx2, bby2 = np.clip(cx + cut_w // 2, 0, width), np.clip(cy + cut_h // 2, 0, height)
    mixed = images.clone()
    mixed[:, :, bbx1:bbx2, bby1:bby2] = images[partner, :, bbx1:bbx2, bby1:bby2]
    corrected = 1 - ((bbx2 - bbx1) * (bby2 - bby1) / (size[-1] * size[-2]))
    return mixed, corrected


@pytest.mark.parametrize("seed", range(8))
def test_matches_the_official_cutmix_loop_on_the_same_lambda_centre_and_permutation(seed):
    rng = np.random.default_rng(seed)
    images = torch.rand(5, 3, 11, 13)
    lam = float(rng.beta(1.0, 1.0))
    partner = torch.from_numpy(rng.permutation(5))
    cx, cy = int(rng.integers(11)), int(rng.integers(13))
    expected, corrected = _official_cutmix(images, lam, partner, cx, cy)
    # our box for the same λ and centre: (rows, cols) = (dim 2, dim 3)
    half_2 = int(np.floor(np.sqrt(1 - lam) * 11 / 2))
    half_3 = int(np.floor(np.sqrt(1 - lam) * 13 / 2))
    box = torch.tensor([[max(cx - half_2, 0), min(cx + half_2, 11), max(cy - half_3, 0), min(cy + half_3, 13)]] * 5)
    masks = box_masks(box, 11, 13)
    torch.testing.assert_close(mix_inputs(images, partner, masks), expected)
    torch.testing.assert_close(masks.mean(dim=(1, 2, 3)), torch.full((5,), float(corrected)))


def test_half_sides_equal_the_official_integer_rule():
    for lam in np.linspace(0.0, 1.0, 1001):
        for side in (7, 8, 32, 224):
            official = int(side * np.sqrt(1.0 - lam)) // 2
            ours = int((torch.sqrt(1.0 - torch.tensor(lam, dtype=torch.float64)) * side / 2).floor())
            assert ours == official, (lam, side)
