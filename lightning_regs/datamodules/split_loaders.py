"""The four DataLoader hooks every lightning_regs DataModule shares, over its ``datasets`` by split."""

from __future__ import annotations

from torch.utils.data import DataLoader, Dataset

from lightning_regs.datamodules.samplers import EpochShuffleSampler

__all__ = ["SplitDataLoaders"]


class SplitDataLoaders:
    """Mixin: ``train/val/test/predict_dataloader`` over ``self.datasets["train" | "val" | "test"]``.

    Put it before ``LightningDataModule`` in the bases. The host sets ``datasets`` (filled by
    ``setup``), ``batch_size``, ``seed``, ``num_workers``, ``pin_memory``, ``persistent_workers`` and,
    optionally, ``eval_batch_size`` (defaults to ``batch_size``). Training batches come in the
    resume-exact :class:`~lightning_regs.datamodules.samplers.EpochShuffleSampler` order; the other
    stages in data set order; ``predict`` uses the test split.

    Example::

        >>> from lightning_regs.datamodules import DigitsDataModule
        >>> isinstance(DigitsDataModule(), SplitDataLoaders)
        True
    """

    datasets: dict[str, Dataset]
    batch_size: int
    seed: int
    num_workers: int
    pin_memory: bool
    persistent_workers: bool

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.datasets:
            self.setup()
        dataset = self.datasets[split]
        eval_batch_size = getattr(self, "eval_batch_size", None) or self.batch_size
        return DataLoader(
            dataset,
            batch_size=self.batch_size if shuffle else eval_batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.seed) if shuffle else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
