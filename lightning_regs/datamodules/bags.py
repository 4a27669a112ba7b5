"""Bags of instances in the batch contract: one sample is a bag, a batch pads its bags to the longest.

A bag sample is a dict with ``image`` (``(N, ...)``: N instance features or images, N varying across bags),
``target`` (the bag's label, int64 scalar), ``index`` and, where known, ``instance_target`` (``(N,)`` int64, each
instance's own label, for evaluation only). :func:`collate_bags` stacks bags into ``image`` of shape
``(B, N_max, ...)`` padded with zeros, ``instance_mask`` (``(B, N_max)`` bool, True for real instances) and
``instance_target`` padded with -1. Other keys of a bag sample (coordinates, say) are not collated. Models and losses
must give a bag the same result alone (batch size 1, the papers' setting) and padded in a batch: they read
``instance_mask``.

Example::

    >>> import torch
    >>> bags = [{"image": torch.ones(3, 4), "target": torch.tensor(1), "index": torch.tensor(0)},
    ...         {"image": torch.ones(1, 4), "target": torch.tensor(0), "index": torch.tensor(1)}]
    >>> batch = collate_bags(bags)
    >>> batch["image"].shape, batch["instance_mask"].tolist(), batch["target"].tolist()
    (torch.Size([2, 3, 4]), [[True, True, True], [True, False, False]], [1, 0])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lightning_regs.batch import IMAGE, INDEX, INSTANCE_MASK, INSTANCE_TARGET, TARGET

__all__ = ["collate_bags"]


def collate_bags(bags: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack bag samples into one padded batch with ``instance_mask`` (see the module's docstring).

    Raises:
        ValueError: for an empty list, an empty bag, or bags whose instances differ in shape beyond N; the message
            names the bag's ``index``.
    """
    if not bags:
        raise ValueError("collate_bags got no bags.")
    shapes = {tuple(bag[IMAGE].shape[1:]) for bag in bags}
    for bag in bags:
        if bag[IMAGE].dim() < 2 or bag[IMAGE].shape[0] == 0:
            raise ValueError(
                f"Bag {int(bag[INDEX]) if INDEX in bag else '?'} has image of shape {tuple(bag[IMAGE].shape)}: a bag "
                "is (N, ...) with N >= 1 instances (features (N, D) or images (N, C, H, W))."
            )
    if len(shapes) > 1:
        raise ValueError(
            f"The bags of one batch hold instances of different shapes {sorted(shapes)}: every instance of every bag "
            "must have the same shape (pre-extract features of one width, or resize the images)."
        )
    sizes = [bag[IMAGE].shape[0] for bag in bags]
    longest = max(sizes)
    first = bags[0][IMAGE]
    image = first.new_zeros((len(bags), longest, *first.shape[1:]))
    mask = torch.zeros(len(bags), longest, dtype=torch.bool)
    instance_target = torch.full((len(bags), longest), -1, dtype=torch.long)
    for row, (bag, size) in enumerate(zip(bags, sizes, strict=True)):
        image[row, :size] = bag[IMAGE]
        mask[row, :size] = True
        if INSTANCE_TARGET in bag:
            labels = torch.as_tensor(bag[INSTANCE_TARGET], dtype=torch.long)
            if labels.shape != (size,):
                raise ValueError(
                    f"Bag {int(bag[INDEX]) if INDEX in bag else row} has {size} instances but instance_target of shape "
                    f"{tuple(labels.shape)}: give one label per instance, (N,)."
                )
            instance_target[row, :size] = labels
    batch = {
        IMAGE: image,
        TARGET: torch.stack([torch.as_tensor(bag[TARGET]) for bag in bags]),
        INSTANCE_MASK: mask,
    }
    if all(INDEX in bag for bag in bags):
        batch[INDEX] = torch.stack([torch.as_tensor(bag[INDEX], dtype=torch.long) for bag in bags])
    if any(INSTANCE_TARGET in bag for bag in bags):
        batch[INSTANCE_TARGET] = instance_target
    return batch
