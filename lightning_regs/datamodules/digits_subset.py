"""Digits with long training epochs, for runs of 1e5 small steps (the grokking recipe)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from lightning_regs.datamodules.digits import DigitsDataModule

__all__ = ["DigitsSubsetDataModule", "RepeatedShuffleSampler"]


class RepeatedShuffleSampler(Sampler[int]):
    """``length`` indices: back-to-back random permutations of ``range(num_samples)``, from (seed, epoch) alone.

    Every sample is seen once per pass, as with ordinary shuffling, but an epoch can span many passes,
    so a run of 1e5 steps over 1,000 samples does not pay Lightning's per-epoch cost 20,000 times.

    Example::

        >>> sampler = RepeatedShuffleSampler(3, length=7, seed=0)
        >>> order = list(sampler)
        >>> len(order), sorted(order[:3]) == sorted(order[3:6]) == [0, 1, 2]
        (7, True)
    """

    def __init__(self, num_samples: int, length: int, seed: int = 0) -> None:
        self.num_samples = int(num_samples)
        self.length = int(length)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        passes = -(-self.length // self.num_samples)
        order = torch.cat([torch.randperm(self.num_samples, generator=generator) for _ in range(passes)])
        return iter(order[: self.length].tolist())

    def __len__(self) -> int:
        return self.length


class DigitsSubsetDataModule(DigitsDataModule):
    """:class:`~lightning_regs.datamodules.digits.DigitsDataModule` whose training epoch is ``steps_per_epoch`` batches.

    With ``val_fraction=0.4435, test_fraction=0`` the training split is exactly 1,000 digits (the
    grokking recipe's size) and all 797 others are held out. Validation runs once per (long) epoch.

    Args:
        steps_per_epoch: training batches per epoch (each a slice of back-to-back shuffled passes).
        **kwargs: the :class:`DigitsDataModule` arguments.

    Example::

        >>> dm = DigitsSubsetDataModule(steps_per_epoch=50, batch_size=200, val_fraction=0.4435, test_fraction=0.0)
        >>> dm.setup("fit")
        >>> len(dm.datasets["train"]), len(dm.train_dataloader())
        (1000, 50)
    """

    def __init__(self, steps_per_epoch: int = 1000, **kwargs) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}.")
        super().__init__(**kwargs)
        self.steps_per_epoch = steps_per_epoch

    def train_dataloader(self) -> DataLoader:
        if not self.datasets:
            self.setup()
        dataset = self.datasets["train"]
        sampler = RepeatedShuffleSampler(len(dataset), self.steps_per_epoch * self.batch_size, self.seed)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )
