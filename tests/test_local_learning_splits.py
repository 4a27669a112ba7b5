"""Split presets, explicit points, and the auto split against brute force over all contiguous partitions."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from lightning_regs.functional.classification import classification_loss
from lightning_regs.local_learning.heads import DGLHead
from lightning_regs.local_learning.saved_bytes import SavedTensorMeter
from lightning_regs.local_learning.splits import (
    auto_split,
    best_partition,
    module_ranges,
    resolve_split,
    split_points,
)
from lightning_regs.models import LayeredModel, resnet32, resnet110


def names(model, points):
    return [model.layer_names[i] for i in points]


def test_paper_presets_map_stage_block_to_layer_names():
    r32, r110 = resnet32(), resnet110()
    assert names(r32, resolve_split(r32, "paper", K=2)) == ["s2b1"]
    assert names(r32, resolve_split(r32, "paper", K=8)) == ["s1b0", "s1b2", "s1b4", "s2b1", "s2b3", "s3b0", "s3b2"]
    k16 = names(r32, resolve_split(r32, "paper", K=16))
    assert k16 == list(r32.layer_names[:-1])  # the stem and every block but the last: 16 one-layer modules
    assert names(r110, resolve_split(r110, "paper", K=4)) == ["s1b11", "s2b7", "s3b3"]
    assert len(resolve_split(r110, "paper", K=16)) == 15
    assert names(r110, resolve_split(r110, "infopro_star", K=2)) == ["s1b14"]
    assert names(r110, resolve_split(r110, "infopro_star", K=4)) == ["s1b6", "s1b14", "s2b8"]
    assert resolve_split(r32, "paper", K=1) == ()


def test_explicit_points_by_name_or_index():
    model = resnet32()
    assert resolve_split(model, ["s1b2", 7, "s3b0"]) == (3, 7, 11)
    assert module_ranges((3, 7, 11), 16) == [(0, 4), (4, 8), (8, 12), (12, 16)]


@pytest.mark.parametrize(
    ("split", "K", "match"),
    [
        ([15], None, "out of range"),
        ([-1], None, "out of range"),
        ([5, 3], None, "strictly increasing"),
        ([3, 3], None, "strictly increasing"),
        (["s9b9"], None, "not a layer name"),
        ([3], 3, "K=3 but 1 split points"),
        ("paper", 17, "larger than the model's 16 layers"),
        ("paper", 3, "No 'paper' split"),
        ("infopro_star", 2, "No 'infopro_star' split"),
        ("auto", 2, "pass `sample`"),
        ("nonsense", 2, "Unknown split"),
        ("auto", 0, "positive integer"),
    ],
)
def test_bad_splits_are_named(split, K, match):
    with pytest.raises(ValueError, match=match):
        resolve_split(resnet32(), split, K=K)


def test_a_model_without_a_layer_sequence_is_named():
    with pytest.raises(TypeError, match="layer sequence"):
        resolve_split(nn.Linear(3, 3), [0])


def brute_force(cost, num_layers, K):
    best = None
    for cuts in itertools.combinations(range(num_layers - 1), K - 1):
        value = max(cost(a, b) for a, b in module_ranges(cuts, num_layers))
        if best is None or value < best[0]:
            best = (value, cuts)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_best_partition_equals_brute_force_on_random_costs(seed):
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 50, (8,), generator=generator).tolist()
    head = torch.randint(0, 30, (8,), generator=generator).tolist()

    def cost(a, b):
        return sum(sizes[a:b]) + head[b - 1]

    for K in range(1, 9):
        points = best_partition(cost, 8, K)
        value = max(cost(a, b) for a, b in module_ranges(points, 8))
        assert len(points) == K - 1
        assert value == brute_force(cost, 8, K)[0]


def uneven_model() -> LayeredModel:
    widths = [64, 256, 32, 128, 16, 96]
    layers = []
    for i, (a, b) in enumerate(zip([20, *widths[:-1]], widths, strict=True)):
        layers.append((f"l{i}", nn.Sequential(nn.Linear(a, b), nn.Tanh())))
    return LayeredModel(layers, nn.Linear(widths[-1], 5), 5)


class HeadFor:
    def __init__(self, model, target):
        self.model, self.target = model, target
        self.heads = {}

    def __call__(self, index, output):
        if index == len(self.model.layers) - 1:
            return lambda h: classification_loss(self.model.head(h), self.target)
        head = self.heads.setdefault(index, DGLHead(tuple(output.shape[1:]), 5, hidden=48))
        return lambda h: head(h, self.target)


def measured_peak(model, points, head_for, x):
    """Train one step module by module (backward at once, detach) and return the peak saved bytes."""
    meter = SavedTensorMeter(exclude=[model])
    ranges = module_ranges(points, len(model.layers))
    h = x
    with meter:
        for a, b in ranges:
            h = model.layers[a:b](h)
            head_for(b - 1, h)(h).backward()
            h = h.detach()
    assert meter.live_bytes == 0
    return meter.peak_bytes


@pytest.mark.parametrize("K", [2, 3, 4])
def test_auto_split_reaches_the_brute_force_optimum_of_measured_peaks(K):
    torch.manual_seed(0)
    model = uneven_model()
    x = torch.randn(16, 20)
    head_for = HeadFor(model, torch.arange(16) % 5)
    points, floor = auto_split(model.layers, K, x, head_for)
    peaks = {
        cuts: measured_peak(model, cuts, head_for, x)
        for cuts in itertools.combinations(range(len(model.layers) - 1), K - 1)
    }
    assert floor == peaks[points]  # the floor is exactly what a real step measures
    assert peaks[points] == min(peaks.values())


def test_auto_split_leaves_batchnorm_statistics_alone():
    model = resnet32()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    auto_split(model.layers, 2, torch.randn(2, 3, 16, 16))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_split_points_checks_each_point():
    layers = resnet32().layers
    assert split_points(layers, []) == ()
    with pytest.raises(ValueError, match=r"\[0, 14\]"):
        split_points(layers, [0, 15])


@pytest.mark.parametrize("point", [2.7, True, None, 1.0])
def test_split_points_that_are_not_ints_or_names_are_refused(point) -> None:
    from lightning_regs.local_learning.splits import split_points
    from lightning_regs.models import resnet20

    with pytest.raises(ValueError, match="is neither a layer index"):
        split_points(resnet20().layers, [point])
