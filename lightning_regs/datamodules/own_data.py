"""Your own data sets as a lightning_regs DataModule: the batch contract, exact resume and DDP sharding for free."""

from __future__ import annotations

from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lightning_regs.datamodules.base import SplitDataModule, check_class_names
from lightning_regs.datamodules.indexed import IndexedDataset

__all__ = ["DatasetDataModule"]


class DatasetDataModule(SplitDataModule):
    """Serve the data sets you already have (``(x, y)`` tuples, dicts, torchvision data sets) like the library's own.

    Each split is wrapped in :class:`~lightning_regs.datamodules.IndexedDataset` (dict batches with
    ``image``, ``target``, ``index``). What a plain ``DataLoader`` given to ``fit`` cannot do, this does:

    * **exact resume from any step**: the training order is a function of ``seed`` and the epoch, and a
      checkpoint written in the middle of an epoch (``every_n_train_steps``, time-based, SLURM requeue)
      resumes with the next batch, not the epoch's first;
    * **the same data, or an error**: the size and digests of the labels (where the data set has ``targets``),
      the file names and the content (the files or arrays the samples are read from, else ``dataset[i]`` itself; see
      :mod:`~lightning_regs.datamodules.fingerprint`) are saved with every checkpoint; resuming on other data, or on
      the same data shuffled or relabelled, is a named error;
    * an empty split, and class names (``classes``) that differ only by case or spaces, are refused at ``setup``;
    * under DDP each rank takes its share of every epoch's order (no sampler to set up).

    Args:
        train: the training data set (map-style).
        val: the validation data set, or ``None``.
        test: the test data set, or ``None`` (``predict`` uses it too).
        batch_size: training batch size (per process); eval_batch_size: for the other stages (default: the same).
        seed: seed of the training order.
        num_classes: the number of classes; by default ``len(train.classes)`` when the data set has ``classes``.
        num_workers, pin_memory, persistent_workers: DataLoader options.

    Example::

        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = DatasetDataModule(TensorDataset(torch.randn(10, 1, 8, 8), torch.arange(10) % 3), batch_size=4)
        >>> batch = next(iter(data.train_dataloader()))
        >>> sorted(batch), batch["image"].shape
        (['image', 'index', 'target'], torch.Size([4, 1, 8, 8]))
    """

    def __init__(
        self,
        train: Dataset,
        val: Dataset | None = None,
        test: Dataset | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        seed: int = 0,
        num_classes: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.save_hyperparameters(ignore=["train", "val", "test"])  # live data sets are not hyper-parameters
        self.sources = {"train": train, "val": val, "test": test}
        self.wrapped = {split: IndexedDataset(data) for split, data in self.sources.items() if data is not None}

    @override
    def num_classes_found(self) -> int | None:
        return self.wrapped["train"].num_classes

    @override
    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            classes = _classes(self.sources["train"])
            if classes is not None:
                check_class_names(list(classes), "the training data set's `classes`")
            self.datasets = dict(self.wrapped)
            found = self.num_classes_found()
            if found is not None:
                self.check_num_classes(found, "the training data set's `classes`")

    @override
    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", train=False) if "val" in self.wrapped else []

    @override
    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test", train=False) if "test" in self.wrapped else []

    @override
    def predict_dataloader(self) -> DataLoader | list:
        return self.test_dataloader()


def _classes(dataset: object) -> list | None:
    """``classes`` of a data set or of one it wraps (``Subset``), else ``None``."""
    while dataset is not None:
        classes = getattr(dataset, "classes", None)
        if classes is not None:
            return list(classes)
        dataset = getattr(dataset, "dataset", None)
    return None
