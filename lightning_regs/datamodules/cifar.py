"""CIFAR-10 and CIFAR-100 from the official python tarballs, verified by sha256 and loaded without unsafe pickle."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms import v2
from typing_extensions import override

from lightning_regs.datamodules.base import SplitDataModule, hparam
from lightning_regs.datamodules.cifar_pickle import MALFORMED, SharedReferenceError, load_cifar_pickle
from lightning_regs.datamodules.download import download_file, extract_archive, remove_interrupted
from lightning_regs.datamodules.indexed import indexed_sample

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule", "SharedReferenceError", "load_cifar_pickle"]


def _integer_labels(labels: Any, count: int, where: str) -> torch.Tensor:
    """``labels`` as int64, when they are ``count`` integers; refuse floats (which would be truncated) and the rest."""
    if labels is None or len(labels) != count:
        raise ValueError(f"{where} must hold one label per image ({count}); the file is malformed.")
    array = np.asarray(labels)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        example = next((value for value in array.ravel() if not isinstance(value, int | np.integer)), array[:1])
        raise ValueError(
            f"{where} must be integer class ids, got {array.dtype} values (e.g. {example!r}). Refusing to round them: "
            "the file is malformed; delete the folder and extract the tarball again."
        )
    return torch.as_tensor(array.astype(np.int64))


class _CIFARImages(Dataset):
    """uint8 ``(N, 3, 32, 32)`` images and their targets as dict samples; ``index`` is the position here."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform: nn.Module | None) -> None:
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = self.images[index]
        image = self.transform(image) if self.transform is not None else image.float().div_(255)
        return indexed_sample(image, self.targets[index], index)


class _CIFARDataModule(SplitDataModule):
    """Shared logic of :class:`CIFAR10DataModule` and :class:`CIFAR100DataModule` (see their docstrings)."""

    num_classes: ClassVar[int]
    base_folder: ClassVar[str]
    url: ClassVar[str]
    filename: ClassVar[str]
    sha256: ClassVar[str]
    train_files: ClassVar[tuple[str, ...]]
    test_files: ClassVar[tuple[str, ...]]
    meta_file: ClassVar[str]
    meta_key: ClassVar[str]
    label_key: ClassVar[str]
    mean: ClassVar[tuple[float, float, float]]
    std: ClassVar[tuple[float, float, float]]
    split_arguments = ("val_fraction",)

    val_fraction = hparam()
    download = hparam()
    download_timeout = hparam(60.0)

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 128,
        val_fraction: float = 0.0,
        seed: int = 0,
        download: bool = False,
        train_transform: nn.Module | None = None,
        eval_transform: nn.Module | None = None,
        num_workers: int = 4,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        download_timeout: float = 60.0,
    ) -> None:
        super().__init__()
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must lie in [0, 1) (0: validate on the test split), got {val_fraction}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}.")
        if not download_timeout > 0:
            raise ValueError(f"download_timeout must be positive (seconds), got {download_timeout}.")
        self.save_hyperparameters(ignore=["train_transform", "eval_transform"])
        self.train_transform = train_transform if train_transform is not None else self.default_train_transform()
        self.eval_transform = eval_transform if eval_transform is not None else self.default_eval_transform()
        self._class_names: tuple[str, ...] | None = None

    @classmethod
    def default_train_transform(cls) -> nn.Module:
        """RandomCrop(32, padding=4), horizontal flip, scale to [0, 1], normalize with the training set's mean/std."""
        return v2.Compose(
            [
                v2.RandomCrop(32, padding=4),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(list(cls.mean), list(cls.std)),
            ]
        )

    @classmethod
    def default_eval_transform(cls) -> nn.Module:
        """Scale to [0, 1] and normalize with the training set's mean/std."""
        return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cls.mean), list(cls.std))])

    @property
    def folder(self) -> Path:
        return self.root / self.base_folder

    def _missing_files(self) -> list[str]:
        names = (*self.train_files, *self.test_files, self.meta_file)
        return [name for name in names if not (self.folder / name).is_file()]

    def _layout_error(self, missing: list[str]) -> FileNotFoundError:
        expected = ", ".join((*self.train_files, *self.test_files, self.meta_file))
        return FileNotFoundError(
            f"{type(self).__name__}: {self.folder} lacks {missing}. Expected the official python version: "
            f"{self.folder}/{{{expected}}}, as extracted from {self.filename} ({self.url}, sha256 {self.sha256}). "
            "Pass download=True (or --data.init_args.download=true) to fetch and verify it, "
            f"or extract it into {self.root}."
        )

    @override
    def prepare_data(self) -> None:
        """Download and extract the tarball when ``download=True`` and the batch files are missing.

        What a killed earlier run left in ``root`` (a hidden ``.part`` download, an ``.extracting-*``
        folder) is removed first, also when the batch files are already there.
        """
        if not self.download:
            return
        if not self._missing_files():
            remove_interrupted(self.root, self.filename)
            return
        archive = download_file(self.url, self.root / self.filename, self.sha256, timeout=self.download_timeout)
        extract_archive(archive, self.root, overwrite=True)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class names from the meta file, in target order."""
        if self._class_names is None:
            if not (self.folder / self.meta_file).is_file():
                raise self._layout_error([self.meta_file])
            names = load_cifar_pickle(self.folder / self.meta_file).get(self.meta_key)
            if not isinstance(names, list) or len(names) != self.num_classes:
                raise ValueError(
                    f"{self.folder / self.meta_file} must hold {self.num_classes} names under '{self.meta_key}'; "
                    "the file is malformed: delete the folder and extract the tarball again."
                )
            self._class_names = tuple(str(name) for name in names)
        return self._class_names

    def _load(self, files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = [], []
        for name in files:
            path = self.folder / name
            content = load_cifar_pickle(path)
            data = content.get("data")
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise ValueError(f"{path}: 'data' must be a uint8 array of shape (N, 3072); the file is malformed.")
            if not len(data):
                raise ValueError(f"{path} holds no images (its 'data' is empty). {MALFORMED}")
            labels = _integer_labels(content.get(self.label_key), len(data), f"{path}: '{self.label_key}'")
            if labels.min() < 0 or labels.max() >= self.num_classes:
                raise ValueError(f"{path}: labels must lie in [0, {self.num_classes}); the file is malformed.")
            images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
            targets.append(labels)
        return torch.cat(images), torch.cat(targets)

    def draw_split(self, num_train: int) -> dict[str, torch.Tensor]:
        """The seeded carve of ``range(num_train)`` into train and validation indices (train only without one)."""
        if self.val_fraction == 0:
            return {"train": torch.arange(num_train)}
        order = torch.randperm(num_train, generator=torch.Generator().manual_seed(self.seed))
        num_val = round(num_train * self.val_fraction)
        return {"train": order[num_val:].sort().values, "val": order[:num_val].sort().values}

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        missing = self._missing_files()
        if missing:
            raise self._layout_error(missing)
        _ = self.class_names
        train_images, train_targets = self._load(self.train_files)
        test_images, test_targets = self._load(self.test_files)
        if not self.split_indices:
            self.split_indices = self.draw_split(len(train_targets))
        needed = int(torch.cat(list(self.split_indices.values())).max()) + 1
        if needed > len(train_targets):
            raise ValueError(
                f"The saved split indexes {needed} training images but {self.folder} holds {len(train_targets)}: "
                "the data set on disk changed since the checkpoint."
            )
        train = self.split_indices["train"]
        self.datasets = {
            "train": _CIFARImages(train_images[train], train_targets[train], self.train_transform),
            "test": _CIFARImages(test_images, test_targets, self.eval_transform),
        }
        if "val" in self.split_indices:
            val = self.split_indices["val"]
            self.datasets["val"] = _CIFARImages(train_images[val], train_targets[val], self.eval_transform)
        else:
            self.datasets["val"] = self.datasets["test"]


_CIFAR_DOC = """{title} from the official python tarball, as dict batches (``image``, ``target``, ``index``).

    ``prepare_data`` downloads ``{filename}`` only when ``download=True`` and the batch files are
    missing, checks its sha256 before extracting it (safely, within size caps) into ``root``, and
    removes what an interrupted earlier run left there; no other hook touches the network. The batch
    files are read through a restricted unpickler that accepts plain numeric numpy arrays only, never
    plain ``pickle.load``, and allocates no more than the file holds. The official test split is
    ``test`` (and ``predict``).

    **What "val" means:** by default (``val_fraction=0``) there is no validation carve and the
    validation loader serves the official *test* split, as most papers report. With
    ``val_fraction > 0`` a seeded share of the training images is held out as validation and the rest
    is trained on. The split, ``val_fraction`` and the seed are kept in :meth:`state_dict`: a run
    resumed from a checkpoint uses the checkpoint's split and seed (with a warning if they differ from
    this module's), so it sees the same data in the same order as the uninterrupted run.

    Training uses RandomCrop(32, padding=4), horizontal flips and normalization with the training
    set's per-channel mean/std; evaluation normalizes only. Both can be replaced from YAML with any
    ``torchvision.transforms.v2`` pipeline taking a uint8 ``(3, 32, 32)`` tensor. The training order
    is a function of ``seed`` and the epoch (:class:`~lightning_regs.datamodules.samplers.EpochShuffleSampler`).
    ``index`` is the position of a sample in its stage's data set.

    Layout: ``root/{base_folder}/{{{files}}}``.

    Args:
        root: the folder holding ``{base_folder}`` (and the tarball once downloaded).
        batch_size: samples per batch on each process.
        val_fraction: share of the training images held out for validation (0: validate on the test split).
        seed: seed of the validation carve and of the training order.
        download: let ``prepare_data`` fetch the tarball from {url}.
        train_transform: replaces the training transforms.
        eval_transform: replaces the validation/test transforms.
        num_workers: DataLoader workers.
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: DataLoader ``persistent_workers`` (only with ``num_workers > 0``).
        download_timeout: seconds to wait for the server (to connect, and for each read) before the
            download fails with a :class:`~lightning_regs.datamodules.download.DownloadError`.

    Example::

        >>> dm = {name}(root="/nonexistent", num_workers=0)
        >>> dm.num_classes, dm.val_fraction
        ({num_classes}, 0.0)
        >>> dm.setup("fit")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: {name}: /nonexistent/{base_folder} lacks [...]...
    """


class CIFAR10DataModule(_CIFARDataModule):
    num_classes = 10
    base_folder = "cifar-10-batches-py"
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    filename = "cifar-10-python.tar.gz"
    sha256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    meta_file = "batches.meta"
    meta_key = "label_names"
    label_key = "labels"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)


class CIFAR100DataModule(_CIFARDataModule):
    num_classes = 100
    base_folder = "cifar-100-python"
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    filename = "cifar-100-python.tar.gz"
    sha256 = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"
    meta_key = "fine_label_names"
    label_key = "fine_labels"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)


for _cls, _title in (
    (CIFAR10DataModule, "CIFAR-10 (60,000 32×32 images, 10 classes)"),
    (CIFAR100DataModule, "CIFAR-100 (60,000 32×32 images, 100 fine classes)"),
):
    _cls.__doc__ = _CIFAR_DOC.format(
        title=_title,
        name=_cls.__name__,
        filename=_cls.filename,
        base_folder=_cls.base_folder,
        files=", ".join((*_cls.train_files, *_cls.test_files, _cls.meta_file)),
        url=_cls.url,
        num_classes=_cls.num_classes,
    )
