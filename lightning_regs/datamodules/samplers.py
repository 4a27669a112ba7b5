"""Samplers whose order is a function of (seed, epoch), so a resumed run sees the batches it would have."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["EpochShuffleSampler"]


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of ``range(num_samples)`` drawn from ``seed`` and the epoch alone.

    ``RandomSampler`` draws from the global RNG, which a checkpoint does not restore: after a
    resume the order differs from an uninterrupted run. Lightning calls :meth:`set_epoch` at
    every training epoch (as it does for ``DistributedSampler``), so the order here is the same
    whether or not the run was interrupted. Under DDP Lightning wraps it in a distributed sampler.

    Example::

        >>> sampler = EpochShuffleSampler(5, seed=0)
        >>> first = list(sampler); sampler.set_epoch(1); second = list(sampler)
        >>> sorted(first) == sorted(second) == [0, 1, 2, 3, 4], first != second
        (True, True)
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples
