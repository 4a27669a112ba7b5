"""Where a monitor's points come from: drawn once from a data set, or from the loaders given to ``fit``."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, Dataset

from lightning_regs._compat import set_up_val_loaders
from lightning_regs.batch import unpack_batch

__all__ = ["draw_from_dataset", "trainer_loaders"]


def draw_from_dataset(
    dataset: Dataset, num_points: int | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_points`` (all when ``None`` or larger than the set) images and targets drawn without replacement.

    Samples may be dicts with ``image``/``target`` or ``(image, target)`` pairs.

    Example::

        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.arange(10.0).view(10, 1), torch.arange(10))
        >>> images, targets = draw_from_dataset(data, 3, torch.Generator().manual_seed(0))
        >>> images.shape, bool((images.squeeze(1).long() == targets).all())
        (torch.Size([3, 1]), True)
    """
    size = len(dataset)  # type: ignore[arg-type]
    if size == 0:
        raise ValueError("The monitor's point set is drawn from an empty data set; give it a split that has samples.")
    if num_points is None or num_points >= size:
        indices = torch.arange(size)
    else:
        indices = torch.randperm(size, generator=generator)[:num_points].sort().values
    images, targets = zip(*(unpack_batch(dataset[int(i)]) for i in indices), strict=True)
    image_tensor = torch.stack([torch.as_tensor(x) for x in images]).float()
    return image_tensor, torch.stack([torch.as_tensor(t) for t in targets])


def trainer_loaders(trainer: pl.Trainer, split: str) -> list[DataLoader]:
    """The DataLoaders ``fit`` was given for ``split`` (``train``, ``val`` or ``test``); ``[]`` when none."""
    if split == "train":
        loaders: Any = trainer.train_dataloader
    else:
        attribute = {"val": "val_dataloaders", "test": "test_dataloaders"}.get(split)
        if attribute is None:
            raise ValueError(f"heldout_split must be 'val' or 'test' when fit has no DataModule, got {split!r}.")
        if split == "val" and trainer.val_dataloaders is None:
            try:  # Lightning sets the val loaders up lazily, at the first validation
                set_up_val_loaders(trainer)
            except MisconfigurationException:  # fit was given no val_dataloaders
                return []
        loaders = getattr(trainer, attribute)
    if loaders is None:
        return []
    if isinstance(loaders, DataLoader):
        return [loaders]
    if isinstance(loaders, dict):
        return list(loaders.values())
    return list(loaders)
