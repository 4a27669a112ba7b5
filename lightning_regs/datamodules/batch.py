"""The dict batch every DataModule yields: the contract's names (from :mod:`lightning_regs.batch`) and an in-memory set.

The keys, the label reader and the unpacking live in :mod:`lightning_regs.batch`, the library's ground floor;
they are re-exported here, where earlier versions defined them.

Example::

    >>> import torch
    >>> batch = {"image": torch.zeros(2, 1, 8, 8), "target": torch.tensor([3, 1]), "index": torch.tensor([0, 5])}
    >>> image, target = unpack_batch(batch)
    >>> target.tolist()
    [3, 1]
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from lightning_regs.batch import (
    HARD_TARGET,
    IMAGE,
    INDEX,
    INDEXED_DATASET_HINT,
    TARGET,
    class_ids,
    unpack_batch,
)
from lightning_regs.datamodules.indexed import indexed_sample

__all__ = [
    "HARD_TARGET",
    "IMAGE",
    "INDEX",
    "INDEXED_DATASET_HINT",
    "TARGET",
    "TensorDictDataset",
    "class_ids",
    "unpack_batch",
]


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
        return indexed_sample(self.images[index], self.targets[index], index)
