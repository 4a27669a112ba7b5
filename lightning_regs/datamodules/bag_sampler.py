"""Batches of whole bags, in an order drawn from (seed, epoch), sharded over DDP ranks by bag, resumable mid-epoch.

Aggregate-response losses (:mod:`lightning_regs.functional.aggregate`) compare a bag's response with the mean of its
instances' predictions, so a batch must hold every instance of each of its bags. :class:`BagBatchSampler` yields
lists of data set indices, ``bags_per_batch`` whole bags at a time; :func:`bag_dataloader` builds the loader.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from lightning_regs.datamodules.samplers import RankReadingSampler

__all__ = ["BagBatchSampler", "BatchedView", "bag_dataloader"]


class BagBatchSampler(RankReadingSampler):
    """Index lists of ``bags_per_batch`` whole bags; a random order of the bags per (seed, epoch); DDP by whole bags.

    **Order.** Each epoch is one permutation of the bags drawn from ``seed`` and the epoch alone (the rule of
    :class:`~lightning_regs.datamodules.samplers.EpochShuffleSampler`, which Lightning's ``set_epoch`` drives), so a
    resumed run sees the batches an uninterrupted run sees. A bag's rows keep their data set order; rows of one bag
    need not be adjacent in the data set.

    **Under DDP** (a process group is initialized when the sampler is iterated) rank ``r`` of ``W`` takes bags
    ``r, r + W, ...`` of the epoch's order, then groups them into batches: every rank holds the same number of bags,
    so the ranks take the same number of steps, and with equal bag sizes the union of one step's batches over the
    ranks is the single-process batch of ``W·bags_per_batch`` bags. When ``W`` does not divide the number of bags
    ``M``: ``drop_last=False`` (default) repeats the first ``W·⌈M/W⌉ − M`` bags of the order, as
    ``DistributedSampler`` pads (those bags count twice that epoch); ``drop_last=True`` leaves out the last
    ``M mod W`` bags of the order (other bags each epoch). A rank's last batch may hold fewer bags.
    It is a ``DistributedSampler``, so Lightning uses it as it is instead of wrapping it.

    **Mid-epoch resume**: :meth:`resume_at` makes the next iteration of that epoch start after the batches this rank
    already trained on; a lightning_regs DataModule calls it when restored from a checkpoint written mid-epoch (as
    :meth:`EpochShuffleSampler.resume_at <lightning_regs.datamodules.samplers.EpochShuffleSampler.resume_at>`, with
    ``skip`` counted in the items this sampler yields: batches).

    **Loaders.** :func:`bag_dataloader` gives it to a ``DataLoader`` as its ``sampler`` (``batch_size=None``): that
    works under DDP too. ``DataLoader(dataset, batch_sampler=sampler)`` works in one process (Lightning calls
    ``set_epoch`` on ``loader.batch_sampler.sampler``, which is this sampler itself) and under DDP with
    ``Trainer(use_distributed_sampler=False)``.

    Args:
        bag_ids: ``(N,)`` integer bag of every row of the data set.
        bags_per_batch: bags in every batch on each process.
        seed: seed of the order; with the epoch, all it depends on.
        shuffle: draw a new order of the bags every epoch (False: bags in increasing id order).
        drop_last: what to do with the bags left over when the ranks do not divide their number (above).

    Example::

        >>> bag_ids = [0, 0, 1, 1, 1, 2, 3, 3]  # four bags of 2, 3, 1 and 2 rows
        >>> sampler = BagBatchSampler(bag_ids, bags_per_batch=2, seed=0)
        >>> batches = list(sampler)
        >>> batches  # data set indices: bags 0 and 1, then bags 3 and 2
        [[0, 1, 2, 3, 4], [6, 7, 5]]
        >>> sampler.set_epoch(1)
        >>> list(sampler)  # another order of the whole bags
        [[2, 3, 4, 6, 7], [5, 0, 1]]
        >>> sampler.set_epoch(0)
        >>> sampler.resume_at(epoch=0, skip=1)
        >>> list(sampler) == batches[1:], len(sampler)
        (True, 2)
    """

    def __init__(
        self,
        bag_ids: Sequence[int] | torch.Tensor,
        bags_per_batch: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        # DistributedSampler's __init__ is not called: the ranks are read when iterating, not at construction.
        ids = torch.as_tensor(bag_ids)
        if ids.numel() == 0:
            raise ValueError("BagBatchSampler: bag_ids is empty; there are no bags to sample.")
        if ids.dim() != 1 or ids.is_floating_point() or ids.dtype == torch.bool or ids.is_complex():
            raise ValueError(
                f"BagBatchSampler: bag_ids must be a 1-D sequence of integer bag ids, one per data set row, got "
                f"{ids.dtype} of shape {tuple(ids.shape)}."
            )
        if isinstance(bags_per_batch, bool) or not isinstance(bags_per_batch, int) or bags_per_batch < 1:
            raise ValueError(f"BagBatchSampler: bags_per_batch must be a positive integer, got {bags_per_batch!r}.")
        order = torch.argsort(ids, stable=True)
        unique, counts = torch.unique_consecutive(ids[order], return_counts=True)
        self.bag_labels: list[int] = unique.tolist()
        self.bags: list[list[int]] = [rows.tolist() for rows in torch.split(order, counts.tolist())]
        self.bags_per_batch = int(bags_per_batch)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    @property
    def sampler(self) -> BagBatchSampler:
        """This sampler: Lightning calls ``set_epoch`` on ``loader.batch_sampler.sampler`` of a ``batch_sampler``."""
        return self

    @property
    def num_bags(self) -> int:
        """Bags in the data set."""
        return len(self.bags)

    @property
    def bags_per_rank(self) -> int:
        """Bags each rank takes per epoch (padded or dropped to the same number on every rank, see the class)."""
        replicas = self.num_replicas
        return self.num_bags // replicas if self.drop_last else -(-self.num_bags // replicas)

    @property
    def num_samples(self) -> int:  # DistributedSampler's name for this rank's share: batches here
        return -(-self.bags_per_rank // self.bags_per_batch)

    def epoch_bag_order(self) -> list[int]:
        """The whole epoch's order of bag positions (``0 .. num_bags − 1``) over all ranks, before sharding."""
        if not self.shuffle:
            return list(range(self.num_bags))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_bags, generator=generator).tolist()

    def rank_bags(self) -> list[int]:
        """The bag positions this rank takes in the current epoch, in order (padded or dropped, see the class)."""
        order = self.epoch_bag_order()
        replicas = self.num_replicas
        if replicas == 1:
            return order
        total = self.bags_per_rank * replicas
        if total == 0:
            raise ValueError(
                f"BagBatchSampler(drop_last=True): {self.num_bags} bags cannot be shared by {replicas} ranks; use "
                "drop_last=False (bags are repeated) or fewer processes."
            )
        order = order[:total] if self.drop_last else (order + order * replicas)[:total]
        return order[self.rank :: replicas]

    def epoch_batches(self) -> list[list[int]]:
        """This rank's batches of the current epoch (data set indices), from its start (ignores :meth:`resume_at`)."""
        bags = self.rank_bags()
        step = self.bags_per_batch
        return [
            [row for bag in bags[start : start + step] for row in self.bags[bag]] for start in range(0, len(bags), step)
        ]

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: the epoch's order is read at the first batch, not when the loader's iterator is made
        # (Lightning makes it before it calls set_epoch for the epoch).
        batches = self.epoch_batches()
        if self._resume is not None and self._resume[0] == self.epoch:
            batches = batches[self._resume[1] :]
        yield from batches

    def __len__(self) -> int:
        return self.num_samples


class BatchedView(Dataset):
    """``dataset`` indexed by a list of indices: ``view[[i, j, ...]]`` is ``collate_fn([dataset[i], dataset[j], ...])``.

    What a ``DataLoader`` with ``sampler=BagBatchSampler(...)`` and ``batch_size=None`` fetches from (each item the
    sampler yields is a whole batch). :func:`bag_dataloader` wraps the data set in it.

    Example::

        >>> from torch.utils.data import TensorDataset
        >>> view = BatchedView(TensorDataset(torch.arange(5.0), torch.arange(5)))
        >>> [t.tolist() for t in view[[4, 1]]]
        [[4.0, 1.0], [4, 1]]
    """

    def __init__(self, dataset: Dataset, collate_fn: Any = default_collate) -> None:
        self.dataset = dataset
        self.collate_fn = collate_fn

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, indices: Sequence[int]) -> Any:
        getitems = getattr(self.dataset, "__getitems__", None)
        items = getitems(list(indices)) if callable(getitems) else [self.dataset[i] for i in indices]
        return self.collate_fn(items)


def bag_dataloader(
    dataset: Dataset, sampler: BagBatchSampler, loader_class: type[DataLoader] = DataLoader, **kwargs: Any
) -> DataLoader:
    """A ``DataLoader`` of whole-bag batches: ``sampler`` as its ``sampler``, ``batch_size=None``, over a BatchedView.

    Works in one process and under DDP (the sampler shards itself and Lightning leaves a ``DistributedSampler``
    as it is). ``kwargs`` go to the loader (``num_workers``, ``pin_memory``, ``collate_fn`` is taken by the view).

    Example::

        >>> from torch.utils.data import TensorDataset
        >>> bags = torch.tensor([0, 0, 1, 1, 2, 2])
        >>> loader = bag_dataloader(TensorDataset(torch.arange(6.0), bags), BagBatchSampler(bags, bags_per_batch=2))
        >>> [sorted(set(b.tolist())) for _, b in loader]
        [[0, 2], [1]]
    """
    collate_fn = kwargs.pop("collate_fn", None) or default_collate
    return loader_class(BatchedView(dataset, collate_fn), sampler=sampler, batch_size=None, **kwargs)
