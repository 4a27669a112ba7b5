"""Harness-ready GCD settings: a small GCDClassifier and the digits in a fixed, rank-split order with two views."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from lightning_regs.tasks import GCDClassifier
from tests.helpers.trainers import SequentialDigits

__all__ = ["SequentialGCDDigits", "convnet_features", "gcd_classifier", "sequential_gcd_digits"]

KNOWN = (5, 6, 7, 8, 9)  # known classes deliberately not first


class _TwoFixedViews(Dataset):
    """Two fixed views (the image; the image plus noise seeded by its index); half the known rows keep labels."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = dict(self.base[i])
        image = sample["image"]
        noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(i))
        labeled = bool(int(sample["target"]) in KNOWN and i % 2 == 0)
        sample["image"] = torch.stack([image, image + 0.3 * noise])
        sample["labeled"] = torch.tensor(labeled)
        sample["true_target"] = sample["target"]
        sample["target"] = sample["target"] if labeled else torch.tensor(-1)
        return sample


class SequentialGCDDigits(SequentialDigits):
    """``SequentialDigits`` (fixed order, split over ranks) whose training rows are GCD rows with two views."""

    def setup(self, stage: str | None = None) -> None:
        fresh = not self.datasets
        super().setup(stage)
        if fresh:
            self.datasets["train"] = _TwoFixedViews(self.datasets["train"])


def convnet_features() -> nn.Sequential:
    """Two convolutions without BatchNorm (per-rank statistics would make FSDP2's ranks differ), 16 features."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip


def gcd_classifier() -> GCDClassifier:
    """LegoGCD on convolutional features of the digits; LER's threshold low enough that rows are selected."""
    return GCDClassifier(
        convnet_features(), feature_dim=16, num_known=5, num_novel=5, known_classes=KNOWN,
        proj_hidden=32, proj_dim=8, teacher_warmup_epochs=3, ler_threshold=0.3, lr=0.05,
    )  # fmt: skip


def sequential_gcd_digits(root: Path, per_rank_batch: int) -> SequentialGCDDigits:
    return SequentialGCDDigits(batch_size=per_rank_batch)
