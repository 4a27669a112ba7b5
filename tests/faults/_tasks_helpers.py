"""Tiny tasks and pre-built batches for the tasks' fault cases (no file of the suite: helpers only)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from lightning_regs.batch import BAG_ID, IMAGE, INDEX, TARGET
from lightning_regs.models import AttentionMIL, SmallCNN
from lightning_regs.tasks import (
    AggregateResponseTask,
    GrokkingClassifier,
    ImageClassifier,
    LocalLearningClassifier,
    MILClassifier,
)
from tests.helpers.trainers import QUIET

CLASSIFIERS = ("image", "grokking", "local", "mil")
TASKS = (*CLASSIFIERS, "aggregate")
BAD = {"nan": float("nan"), "+inf": float("inf"), "-inf": float("-inf")}
ROWS, BATCHES = 4, 3


def make_task(kind: str, **kwargs: Any):
    torch.manual_seed(0)
    common = {"scheduler": "constant", **kwargs}
    if kind == "image":
        return ImageClassifier(SmallCNN(width=4), 10, lr=0.05, **common)
    if kind == "grokking":
        return GrokkingClassifier(SmallCNN(width=4), 10, **common)
    if kind == "local":
        return LocalLearningClassifier(SmallCNN(width=4), 10, split=[1], input_shape=(1, 8, 8), lr=0.05, **common)
    if kind == "mil":
        return MILClassifier(AttentionMIL(in_features=8), 2, lr=1e-2, **common)
    if kind == "aggregate":
        return AggregateResponseTask(torch.nn.Linear(1, 1), rho=0.5, **kwargs)
    raise ValueError(kind)


def num_classes(kind: str) -> int:
    return 2 if kind == "mil" else 10


def batches(kind: str, stage: str = "train", n: int = BATCHES) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of ``ROWS`` rows, the same for every call (seeded)."""
    generator = torch.Generator().manual_seed(1 if stage == "train" else 2)
    out = []
    for i in range(n):
        index = torch.arange(ROWS) + ROWS * i
        if kind == "mil":
            batch = {IMAGE: torch.randn(ROWS, 5, 8, generator=generator), TARGET: index % 2}
        elif kind == "aggregate":
            image = torch.randn(ROWS, 1, generator=generator)
            if stage == "train":
                bag = torch.tensor([0, 0, 1, 1]) + 2 * i
                batch = {IMAGE: image, TARGET: torch.tensor([0.5, 0.5, -0.5, -0.5]), BAG_ID: bag}
            else:
                batch = {IMAGE: image, TARGET: image[:, 0].clone()}
        else:
            batch = {IMAGE: torch.randn(ROWS, 1, 8, 8, generator=generator), TARGET: index % 10}
        batch[INDEX] = index
        out.append(batch)
    return out


def loader(data: list[dict[str, torch.Tensor]]) -> DataLoader:
    return DataLoader(data, batch_size=None)  # each element is one batch, as it is


def fit(task, train, val=None, **trainer_kwargs: Any) -> tuple[Trainer, list[str]]:
    """One epoch over ``train`` (and ``val``); returns the trainer and the warnings' messages."""
    trainer = Trainer(max_epochs=1, **{**QUIET, **trainer_kwargs})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(task, loader(train), loader(val) if val is not None else None)
    return trainer, [str(w.message) for w in caught]


def poke(batch: dict[str, torch.Tensor], value: float, row: int = 1) -> dict[str, torch.Tensor]:
    """``batch`` with one input value of ``row`` set to ``value``."""
    image = batch[IMAGE].clone()
    image[row].view(-1)[0] = value
    return {**batch, IMAGE: image}
