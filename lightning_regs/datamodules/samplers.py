"""Samplers whose order is a function of (seed, epoch), so a resumed run sees the batches it would have."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["EpochShuffleSampler"]


class EpochShuffleSampler(Sampler[int]):
    """Random permutations of ``range(num_samples)`` drawn from ``seed`` and the epoch alone.

    ``RandomSampler`` draws from the global RNG, which a checkpoint does not restore: after a
    resume the order differs from an uninterrupted run. Lightning calls :meth:`set_epoch` at
    every training epoch (as it does for ``DistributedSampler``), so the order here is the same
    whether or not the run was interrupted. Under DDP Lightning wraps it in a distributed sampler.

    An epoch is one permutation by default. With ``length``, it is ``length`` indices taken from
    back-to-back permutations (every sample is seen once per pass), so one epoch can span many
    passes: a run of 1e5 steps over 1,000 samples then does not pay Lightning's per-epoch cost
    20,000 times. The first pass is the same permutation with or without ``length``.

    Args:
        num_samples: size of the data set.
        seed: seed of the order; with the epoch, all it depends on.
        length: indices per epoch (default ``num_samples``: one pass).

    Example::

        >>> sampler = EpochShuffleSampler(5, seed=0)
        >>> first = list(sampler); sampler.set_epoch(1); second = list(sampler)
        >>> sorted(first) == sorted(second) == [0, 1, 2, 3, 4], first != second
        (True, True)
        >>> long = EpochShuffleSampler(3, seed=0, length=7)
        >>> order = list(long)
        >>> len(order), sorted(order[:3]) == sorted(order[3:6]) == [0, 1, 2]
        (7, True)
    """

    def __init__(self, num_samples: int, seed: int = 0, length: int | None = None) -> None:
        if num_samples < 1 and (length or 0) > 0:
            raise ValueError(f"EpochShuffleSampler: length={length} indices cannot be drawn from an empty data set.")
        if length is not None and length < 0:
            raise ValueError(f"EpochShuffleSampler: length must be None (one pass) or 0 or more, got {length}.")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.length = self.num_samples if length is None else int(length)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        passes = -(-self.length // self.num_samples) if self.num_samples else 0
        order = [torch.randperm(self.num_samples, generator=generator) for _ in range(passes)]
        return iter(torch.cat(order)[: self.length].tolist() if order else [])

    def __len__(self) -> int:
        return self.length
