"""The dict batch every DataModule yields, and the checks tasks and callbacks run on it.

Keys (see ``docs/design.md``):

* ``image``: float tensor ``(B, C, H, W)``, normalized;
* ``target``: int64 class ids ``(B,)`` (a task may also accept float class probabilities ``(B, C)``);
* ``index``: int64 position of each sample in its stage's data set, stable across epochs and ranks;
* ``hard_target`` (optional): the original class ids, added by callbacks that make ``target`` soft.

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

__all__ = ["HARD_TARGET", "IMAGE", "INDEX", "TARGET", "TensorDictDataset", "unpack_batch"]

IMAGE = "image"
TARGET = "target"
INDEX = "index"
# Set by callbacks that replace ``target`` with soft targets (PS-KD): the original class ids.
HARD_TARGET = "hard_target"


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
            f"and '{INDEX}' (int64 sample positions), as every lightning_regs DataModule yields."
        )
    if isinstance(batch, Sequence) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(
        f"Cannot read a batch of type {type(batch).__name__}. Yield dicts with '{IMAGE}', '{TARGET}' and "
        f"'{INDEX}' (or at least an (image, target) pair) from your DataLoader."
    )


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
