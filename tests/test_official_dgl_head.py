"""Oracle: DGLHead against the auxiliary classifier of the official code, re-derived from what it computes.

The AugLocal repository's DGL head (its re-implementation of eugenium/DGL): average-pool to ceil(H/4), three
[1x1 conv C->C without bias, BN, ReLU], pool to s = min(ceil(H/4), 2), two [Linear(C·s², C·s²) without bias,
BN1d, ReLU], Linear(C·s², classes). Written out here independently, then compared layer by layer.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_regs.local_learning.heads import DGLHead


def official_dgl_head(channels: int, size: int, num_classes: int) -> nn.Sequential:
    pooled = math.ceil(size / 4)
    side = min(pooled, 2)
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(pooled)]
    for _ in range(3):
        layers += [nn.Conv2d(channels, channels, kernel_size=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
    width = channels * side * side
    layers += [nn.AdaptiveAvgPool2d(side), nn.Flatten()]
    for _ in range(2):
        layers += [nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("channels", "expected"), [(16, 9_962), (32, 37_834), (64, 147_338)])
def test_parameter_counts_are_the_official_ones(channels: int, expected: int) -> None:
    size = {16: 32, 32: 16, 64: 8}[channels]  # the three stages of a CIFAR ResNet
    assert _count(DGLHead((channels, size, size), 10)) == _count(official_dgl_head(channels, size, 10)) == expected


@pytest.mark.parametrize(("channels", "size"), [(16, 32), (32, 16), (64, 8), (8, 4), (8, 7)])
def test_the_head_computes_what_the_official_head_computes(channels: int, size: int) -> None:
    torch.manual_seed(0)
    ours, official = DGLHead((channels, size, size), 10), official_dgl_head(channels, size, 10)
    ours_parameters = [*ours.features.parameters(), *ours.classifier.parameters()]
    official_parameters = list(official.parameters())
    assert [tuple(p.shape) for p in ours_parameters] == [tuple(p.shape) for p in official_parameters]
    with torch.no_grad():
        for mine, theirs in zip(ours_parameters, official_parameters, strict=True):
            mine.copy_(theirs)
    h = torch.randn(6, channels, size, size)
    ours.train(), official.train()
    torch.testing.assert_close(ours.logits(h), official(h), rtol=0, atol=0)
