"""The dict batch every DataModule yields, and the checks tasks and callbacks run on it.

Keys (see ``docs/design.md``):

* ``image``: float tensor ``(B, C, H, W)``, normalized;
* ``target``: int64 class ids ``(B,)`` (a task may also accept float class probabilities ``(B, C)``);
* ``index``: int64 position of each sample in its stage's data set, stable across epochs and ranks;
* ``hard_target`` (optional): the original class ids, added by callbacks that make ``target`` soft
  (:func:`class_ids` reads the ids either way).

Your own data set yields such samples once wrapped in :class:`~lightning_regs.datamodules.IndexedDataset`.

Example::

    >>> import torch
    >>> batch = {"image": torch.zeros(2, 1, 8, 8), "target": torch.tensor([3, 1]), "index": torch.tensor([0, 5])}
    >>> image, target = unpack_batch(batch)
    >>> target.tolist()
    [3, 1]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["HARD_TARGET", "IMAGE", "INDEX", "TARGET", "TensorDictDataset", "class_ids", "unpack_batch"]

IMAGE = "image"
TARGET = "target"
INDEX = "index"
# Set by callbacks that replace ``target`` with soft targets (PS-KD): the original class ids.
HARD_TARGET = "hard_target"
# How to get dict batches out of your own data set; every error about a non-dict batch or a missing key ends with it.
INDEXED_DATASET_HINT = (
    "wrap your data set as `lightning_regs.datamodules.IndexedDataset(dataset)`, e.g. "
    "`DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=64)` (rename dict keys with "
    "`IndexedDataset(dataset, keys={'img': 'image', 'label': 'target'})`)"
)


def unpack_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(image, target)`` from a dict batch, or from an ``(image, target)`` pair.

    Raises:
        TypeError: when the batch is neither, with the keys that are expected.
    """
    if isinstance(batch, Mapping):
        missing = [key for key in (IMAGE, TARGET) if key not in batch]
        if not missing:
            return batch[IMAGE], batch[TARGET]
        raise TypeError(
            f"The batch is a dict without {missing}; it has {sorted(batch)}. lightning_regs tasks expect "
            f"dict batches with '{IMAGE}' (float images), '{TARGET}' (int64 class ids or (B, C) probabilities) "
            f"and '{INDEX}' (int64 sample positions), as every lightning_regs DataModule yields; "
            f"{INDEXED_DATASET_HINT}."
        )
    if isinstance(batch, Sequence) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(
        f"Cannot read a batch of type {type(batch).__name__}. Yield dicts with '{IMAGE}', '{TARGET}' and "
        f"'{INDEX}' (or at least an (image, target) pair) from your DataLoader: {INDEXED_DATASET_HINT}."
    )


def class_ids(batch: Mapping[str, Any]) -> torch.Tensor:
    """The int64 class ids of a dict batch: ``hard_target`` when a callback softened ``target``, else ``target``.

    Measure accuracy against this in your own ``training_step``: it is right whether or not a
    target-softening callback (PS-KD, label smoothing) ran on the batch.

    Raises:
        TypeError: when the batch is not a dict with ``target``.
        ValueError: when ``target`` holds ``(B, C)`` probabilities and there is no ``hard_target``.

    Example::

        >>> import torch
        >>> class_ids({"target": torch.tensor([2, 0])}).tolist()
        [2, 0]
        >>> class_ids({"target": torch.tensor([[0.1, 0.9], [0.8, 0.2]]), "hard_target": torch.tensor([1, 0])}).tolist()
        [1, 0]
    """
    if not isinstance(batch, Mapping) or TARGET not in batch:
        found = f"a dict with keys {sorted(batch)}" if isinstance(batch, Mapping) else f"a {type(batch).__name__}"
        raise TypeError(f"class_ids reads a dict batch with '{TARGET}', got {found}: {INDEXED_DATASET_HINT}.")
    if HARD_TARGET in batch:
        return batch[HARD_TARGET]
    target = batch[TARGET]
    if target.is_floating_point() and target.dim() == 2:
        raise ValueError(
            f"batch['{TARGET}'] holds (B, C) probabilities and the batch has no '{HARD_TARGET}': the class ids are "
            "not known (targets made soft in the data, e.g. MixUp in the DataLoader, carry none)."
        )
    return target


class TensorDictDataset(Dataset):
    """In-memory images and targets served as dict samples with their ``index``.

    Args:
        images: ``(N, C, H, W)`` float tensor.
        targets: ``(N,)`` int64 tensor.

    Example::

        >>> import torch
        >>> ds = TensorDictDataset(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 2]))
        >>> sorted(ds[2]), int(ds[2]["index"])
        (['image', 'index', 'target'], 2)
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        if len(images) != len(targets):
            raise ValueError(f"images ({len(images)}) and targets ({len(targets)}) differ in length")
        self.images = images
        self.targets = targets.long()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            IMAGE: self.images[index],
            TARGET: self.targets[index],
            INDEX: torch.tensor(index, dtype=torch.long),
        }
