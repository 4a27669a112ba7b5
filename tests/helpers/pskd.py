"""Modules and data for the PS-KD tests (module level, so ddp_spawn can pickle them)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate

from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.datamodules.samplers import EpochShuffleSampler
from lightning_regs.tasks import ImageClassifier

__all__ = [
    "CollatedDigits",
    "LossOnlyClassifier",
    "RecordingClassifier",
    "drop_index",
    "one_hot_targets",
    "shift_index",
]


class RecordingClassifier(ImageClassifier):
    """Records, at every training step, the epoch, indices, labels, targets it was given and its probabilities."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps: list[dict[str, Any]] = []

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        out = super().training_step(batch, batch_idx)
        self.steps.append(
            {
                "epoch": self.current_epoch,
                "index": batch["index"].clone(),
                "labels": batch.get("hard_target", batch["target"]).clone(),
                "target": batch["target"].clone(),
                "probabilities": out["logits"].float().softmax(-1).clone(),
            }
        )
        return out


class LossOnlyClassifier(ImageClassifier):
    """Returns only the loss from training_step, as many user modules do."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return super().training_step(batch, batch_idx)["loss"]


def drop_index(samples: list[dict]) -> dict:
    batch = default_collate(samples)
    del batch["index"]
    return batch


def shift_index(samples: list[dict]) -> dict:
    batch = default_collate(samples)
    batch["index"] = batch["index"] + 100_000
    return batch


def one_hot_targets(samples: list[dict]) -> dict:
    batch = default_collate(samples)
    batch["target"] = torch.nn.functional.one_hot(batch["target"], 10).float()
    return batch


class CollatedDigits(DigitsDataModule):
    """Digits whose training batches go through ``collate`` (to build malformed batches)."""

    def __init__(self, collate: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.collate = collate

    def train_dataloader(self) -> DataLoader:
        self.setup()
        dataset = self.datasets["train"]
        return DataLoader(dataset, self.batch_size, sampler=EpochShuffleSampler(len(dataset)), collate_fn=self.collate)
