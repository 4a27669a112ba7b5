"""Samplers whose order is a function of (seed, epoch), so a resumed run sees the batches it would have."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler
from typing_extensions import override

__all__ = ["EpochShuffleSampler", "RankReadingSampler"]


class RankReadingSampler(DistributedSampler):
    """A ``DistributedSampler`` that reads its rank and world size when iterated, and resumes inside an epoch.

    The base of :class:`EpochShuffleSampler` and :class:`~lightning_regs.datamodules.bag_sampler.BagBatchSampler`:
    ``DistributedSampler.__init__`` is not called (no process group is needed at construction); a subclass sets
    ``epoch`` and ``_resume`` and reads ``_resume`` when it iterates.
    """

    epoch: int
    _resume: tuple[int, int] | None

    @property
    def num_replicas(self) -> int:
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    @property
    def rank(self) -> int:
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    @override
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, skip: int) -> None:
        """Start ``epoch``'s iterations after this rank's first ``skip`` draws (they were trained before a stop)."""
        if skip < 0:
            raise ValueError(f"{type(self).__name__}.resume_at: skip must be 0 or more, got {skip}.")
        self._resume = (int(epoch), int(skip))


class EpochShuffleSampler(RankReadingSampler):
    """Random permutations of ``range(num_samples)`` drawn from ``seed`` and the epoch alone, sharded over the ranks.

    ``RandomSampler`` draws from the global RNG, which a checkpoint does not restore: after a
    resume the order differs from an uninterrupted run. Lightning calls :meth:`set_epoch` at
    every training epoch, so the order here is the same whether or not the run was interrupted.

    An epoch is one permutation by default. With ``length``, it is ``length`` indices taken from
    back-to-back permutations (every sample is seen once per pass), so one epoch can span many
    passes: a run of 1e5 steps over 1,000 samples then does not pay Lightning's per-epoch cost
    20,000 times. The first pass is the same permutation with or without ``length``.

    **Under DDP** (a process group is initialized when the sampler is iterated) rank ``r`` of ``W``
    takes items ``r, r + W, ...`` of the epoch's order, padded like ``DistributedSampler`` to a
    multiple of ``W``. It is a ``DistributedSampler``, so Lightning uses it as it is instead of
    wrapping it. **Mid-epoch resume**: :meth:`resume_at` makes the next iteration of that epoch
    start after the items this rank already trained on, which is what a lightning_regs DataModule
    does when it is restored from a checkpoint written in the middle of an epoch.

    Args:
        num_samples: size of the data set.
        seed: seed of the order; with the epoch, all it depends on.
        length: indices per epoch over all ranks (default ``num_samples``: one pass).

    Example::

        >>> sampler = EpochShuffleSampler(5, seed=0)
        >>> first = list(sampler); sampler.set_epoch(1); second = list(sampler)
        >>> sorted(first) == sorted(second) == [0, 1, 2, 3, 4], first != second
        (True, True)
        >>> long = EpochShuffleSampler(3, seed=0, length=7)
        >>> order = list(long)
        >>> len(order), sorted(order[:3]) == sorted(order[3:6]) == [0, 1, 2]
        (7, True)
        >>> sampler.resume_at(epoch=1, skip=2)
        >>> list(sampler) == second[2:], len(sampler)
        (True, 5)
    """

    def __init__(self, num_samples: int, seed: int = 0, length: int | None = None) -> None:
        # DistributedSampler's __init__ is not called: the ranks are read when iterating, not at construction.
        if num_samples < 1 and (length or 0) > 0:
            raise ValueError(f"EpochShuffleSampler: length={length} indices cannot be drawn from an empty data set.")
        if length is not None and length < 0:
            raise ValueError(f"EpochShuffleSampler: length must be None (one pass) or 0 or more, got {length}.")
        self.num_samples_total = int(num_samples)
        self.seed = int(seed)
        self.length = self.num_samples_total if length is None else int(length)
        self.epoch = 0
        self.shuffle = True
        self.drop_last = False
        self._resume: tuple[int, int] | None = None

    @property
    def num_samples(self) -> int:  # DistributedSampler's name for this rank's share
        return -(-self.length // self.num_replicas)

    def epoch_order(self) -> list[int]:
        """The whole epoch's order over all ranks (before sharding)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        passes = -(-self.length // self.num_samples_total) if self.num_samples_total else 0
        order = [torch.randperm(self.num_samples_total, generator=generator) for _ in range(passes)]
        return torch.cat(order)[: self.length].tolist() if order else []

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order()
        replicas = self.num_replicas
        if replicas > 1 and order:
            padded = order + (order * replicas)[: self.num_samples * replicas - len(order)]
            order = padded[self.rank :: replicas]
        if self._resume is not None and self._resume[0] == self.epoch:
            order = order[self._resume[1] :]
        return iter(order)

    def __len__(self) -> int:
        return self.num_samples
