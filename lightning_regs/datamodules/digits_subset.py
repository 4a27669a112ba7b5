"""Digits with long training epochs, for runs of 1e5 small steps (the grokking recipe)."""

from __future__ import annotations

from torch.utils.data import Dataset
from typing_extensions import override

from lightning_regs.datamodules.base import hparam
from lightning_regs.datamodules.digits import DigitsDataModule
from lightning_regs.datamodules.samplers import EpochShuffleSampler

__all__ = ["DigitsSubsetDataModule"]


class DigitsSubsetDataModule(DigitsDataModule):
    """:class:`~lightning_regs.datamodules.digits.DigitsDataModule` whose training epoch is ``steps_per_epoch`` batches.

    With ``val_fraction=0.4435, test_fraction=0`` the training split is exactly 1,000 digits (the
    grokking recipe's size) and all 797 others are held out. Validation runs once per (long) epoch.
    An epoch is a slice of back-to-back shuffled passes
    (:class:`~lightning_regs.datamodules.samplers.EpochShuffleSampler` with ``length``), so a run of
    1e5 small steps does not pay Lightning's per-epoch cost at every pass over the data.
    ``steps_per_epoch`` shapes the training order, so a resumed run adopts the checkpoint's.

    Args:
        steps_per_epoch: training batches per epoch.
        **kwargs: the :class:`DigitsDataModule` arguments.

    Example::

        >>> dm = DigitsSubsetDataModule(steps_per_epoch=50, batch_size=200, val_fraction=0.4435, test_fraction=0.0)
        >>> dm.setup("fit")
        >>> len(dm.datasets["train"]), len(dm.train_dataloader())
        (1000, 50)
    """

    split_arguments = (*DigitsDataModule.split_arguments, "steps_per_epoch")

    steps_per_epoch = hparam()

    def __init__(self, steps_per_epoch: int = 1000, **kwargs) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}.")
        super().__init__(**kwargs)

    @override
    def train_sampler(self, dataset: Dataset) -> EpochShuffleSampler:
        return EpochShuffleSampler(len(dataset), self.seed, length=self.steps_per_epoch * self.batch_size)  # type: ignore[arg-type]
