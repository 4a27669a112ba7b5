"""The shape of one training input, read from the data a ``fit`` was given (before its loaders are set up)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from lightning_regs._compat import fit_train_loaders
from lightning_regs.batch import IMAGE

__all__ = ["sample_input_shape", "training_input_shape"]


def sample_input_shape(sample: Any) -> tuple[int, ...] | None:
    """The image shape of one data-set sample: a dict with ``image``, an ``(image, target, ...)`` tuple, or a tensor.

    Example::

        >>> sample_input_shape((torch.zeros(1, 8, 8), 3)), sample_input_shape({"image": torch.zeros(5)})
        ((1, 8, 8), (5,))
    """
    if isinstance(sample, Mapping):
        sample = sample.get(IMAGE)
    elif isinstance(sample, Sequence) and not isinstance(sample, str) and len(sample) >= 1:
        sample = sample[0]
    if isinstance(sample, torch.Tensor) and sample.dim() >= 1:
        return tuple(sample.shape)
    return None


def training_input_shape(trainer: pl.Trainer) -> tuple[int, ...] | None:
    """One training sample's image shape, from the DataModule or the loaders given to ``fit``; ``None`` if unknown.

    Called in ``LightningModule.setup``, when the DataModule is set up but Lightning has not loaded the training
    loaders yet.
    """
    datamodule = trainer.datamodule
    if datamodule is not None:
        dataset = (
            datamodule.evaluation_dataset("train")
            if hasattr(datamodule, "evaluation_dataset")
            else _dataset_of(datamodule.train_dataloader())
        )
    else:
        loaders = fit_train_loaders(trainer)  # the loaders given to fit, or the module's train_dataloader
        dataset = _dataset_of(loaders) if loaders is not None else None
    if dataset is None:
        return None
    try:
        return sample_input_shape(dataset[0])
    except (IndexError, KeyError, TypeError):  # empty or not map-style
        return None


def _dataset_of(loaders: Any) -> Any:
    if isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    elif isinstance(loaders, Sequence):
        loaders = loaders[0] if loaders else None
    return loaders.dataset if isinstance(loaders, DataLoader) else None
