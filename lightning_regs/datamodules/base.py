"""The base of every lightning_regs DataModule: split, seed, loaders, ``num_classes`` and the resume rule."""

from __future__ import annotations

import copy
import functools
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from typing_extensions import override

from lightning_regs.datamodules.fingerprint import _labels as _dataset_labels
from lightning_regs.datamodules.options import get_option, hparam, set_option
from lightning_regs.datamodules.resume import (
    DataChangedError,
    ResumableDataLoader,
    ResumePositionError,
    SplitResumeState,
)
from lightning_regs.datamodules.samplers import EpochShuffleSampler
from lightning_regs.trusted_loading import TrustedCheckpointLoading

# hparam, set_option and get_option live in options.py, the resume state in resume.py; importable from here too
__all__ = [
    "DataChangedError",
    "NumClassesUnknownError",
    "ResumableDataLoader",
    "ResumePositionError",
    "SplitDataModule",
    "SplitError",
    "check_class_names",
    "get_option",
    "hparam",
    "set_option",
]


class NumClassesUnknownError(AttributeError):
    """``num_classes`` was read before ``setup`` on a data set that learns its classes from the files.

    An ``AttributeError``, so ``getattr(datamodule, "num_classes", None)`` treats the value as not
    known yet; read directly, the message says what to pass.
    """


class SplitError(ValueError):
    """A split that cannot serve its purpose: empty, of one class where a metric needs both, or class names that
    differ only by case or spaces (the same class counted twice)."""


def check_class_names(names: Sequence[Any], where: str) -> None:
    """Refuse class names that differ only by case or spaces, naming both (``where``: where they were read).

    ``"cat"`` and ``"Cat "`` would become two classes of one; a typo in a CSV or a folder name is the usual cause.

    Example::

        >>> check_class_names(["cat", "dog"], "labels.csv")
        >>> check_class_names(["cat", "Cat "], "labels.csv")
        Traceback (most recent call last):
        ...
        lightning_regs.datamodules.base.SplitError: labels.csv: the class names 'cat' and 'Cat ' differ only by \
case or spaces, so one class would be counted as two. Write them the same way (fix the labels or rename the folder).
    """
    seen: dict[str, Any] = {}
    for name in names:
        if not isinstance(name, str):
            continue
        key = " ".join(name.split()).casefold()
        if key in seen and seen[key] != name:
            raise SplitError(
                f"{where}: the class names {seen[key]!r} and {name!r} differ only by case or spaces, so one class "
                "would be counted as two. Write them the same way (fix the labels or rename the folder)."
            )
        seen.setdefault(key, name)


class SplitDataModule(SplitResumeState, TrustedCheckpointLoading, pl.LightningDataModule):
    """The base of every lightning_regs DataModule: one way to split, load, count classes and resume.

    A subclass calls ``super().__init__()``, checks its arguments, calls ``self.save_hyperparameters()``
    (path values are stored as strings, so checkpoints load with ``torch.load(weights_only=True)``)
    and reads its arguments from ``self.hparams``, or declares them as attributes with :class:`hparam`
    (``val_fraction = hparam()``); nothing is copied by hand. Its ``setup`` fills ``datasets``
    (``"train"``, ``"val"``, ``"test"``) and, when it draws a split, ``split_indices``.

    **Owned here:** ``seed``, ``batch_size``, ``eval_batch_size`` (default ``batch_size``),
    ``num_workers``, ``pin_memory``, ``persistent_workers`` (only with workers), the split indices by
    name, and the four loaders: training batches in the resume-exact order of :meth:`train_sampler`
    (an :class:`~lightning_regs.datamodules.samplers.EpochShuffleSampler` of ``seed`` and the epoch),
    the other stages in data set order; ``predict`` uses the test split.

    **num_classes:** a plain ``int`` right after construction wherever the data set fixes it (a class
    attribute: Digits 10, CIFAR 10/100, MVTec AD 2). Where only the files tell (CUB, RadImageNet),
    reading it before ``setup`` raises :class:`NumClassesUnknownError` naming the fix: call ``setup()``
    first, or pass ``num_classes=N`` so it is known at construction; ``setup`` then checks ``N``
    against the data and refuses a mismatch. A subclass reports what it found with
    :meth:`num_classes_found` and checks it with :meth:`check_num_classes`.

    **Resume:** :meth:`state_dict` holds ``seed``, the :attr:`split_arguments` and
    :attr:`task_arguments` (their hyper-parameter values), every ``split_indices[name]`` as
    ``<name>_indices`` and the subclass's :meth:`extra_state`; tensors and builtins only.
    :meth:`load_state_dict` adopts the checkpoint's split and seed (so the training order) and writes
    them into ``hparams``, so a resumed run ends where the uninterrupted one ends, with one warning when
    this module's own values differ. A differing :attr:`task_arguments` value changes what the
    targets mean: it is refused. Then the data is set up again, unless it already was with this state.

    A subclass implements ``setup`` and declares: :attr:`split_arguments` (hyper-parameters that
    define the split or training order, besides ``seed``), :attr:`task_arguments`, and optionally
    :meth:`extra_state` / :meth:`load_extra_state`, :meth:`train_sampler`, :meth:`num_classes_found` and
    :attr:`collate_fn`.

    Example::

        >>> import torch
        >>> from torch.utils.data import Subset
        >>> from lightning_regs.datamodules.batch import TensorDictDataset
        >>> class Squares(SplitDataModule):
        ...     num_classes = 2
        ...     split_arguments = ("val_fraction",)
        ...     val_fraction = hparam()
        ...     def __init__(self, batch_size: int = 4, val_fraction: float = 0.25, seed: int = 0) -> None:
        ...         super().__init__()
        ...         self.save_hyperparameters()
        ...     def setup(self, stage: str | None = None) -> None:
        ...         if self.datasets:
        ...             return
        ...         if not self.split_indices:
        ...             order = torch.randperm(16, generator=torch.Generator().manual_seed(self.seed))
        ...             self.split_indices = {"val": order[:4].sort().values, "train": order[4:].sort().values}
        ...         pixels = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(0))  # the same data
        ...         data = TensorDictDataset(pixels, torch.arange(16) % 2)
        ...         self.datasets = {s: Subset(data, i.tolist()) for s, i in self.split_indices.items()}
        ...         self.datasets["test"] = self.datasets["val"]
        >>> original = Squares(seed=0)
        >>> original.setup()
        >>> resumed = Squares(seed=1)
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     resumed.load_state_dict(original.state_dict())
        >>> len(caught), resumed.seed, torch.equal(resumed.split_indices["val"], original.split_indices["val"])
        (1, 0, True)
    """

    #: Hyper-parameters besides ``seed`` that define the split or the training order: saved, and adopted on resume.
    split_arguments: ClassVar[tuple[str, ...]] = ()
    #: Hyper-parameters that define what the targets mean: saved, and a checkpoint made with others is refused.
    task_arguments: ClassVar[tuple[str, ...]] = ()
    #: How the loaders stack samples into a batch (None: PyTorch's default); bag DataModules pad with ``collate_bags``.
    collate_fn: ClassVar[Callable[[list[Any]], Any] | None] = None

    seed = hparam()
    batch_size = hparam()
    num_workers = hparam(0)
    pin_memory = hparam(False)

    #: Splits whose metric needs both classes of a two-class task (e.g. an AUROC over good and anomalous images):
    #: ``setup`` refuses one of them whose ``targets``/``labels`` hold one class only.
    two_class_splits: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self.split_indices: dict[str, torch.Tensor] = {}
        self.datasets: dict[str, Dataset] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "setup" in cls.__dict__:  # every subclass's setup ends with the split checks (once, at the outermost)
            cls.setup = _checked_setup(cls.__dict__["setup"])  # type: ignore[method-assign]

    def check_splits(self) -> None:
        """Refuse, naming the split and the fix, a split that is empty or (see :attr:`two_class_splits`) one-sided.

        Runs at the end of every ``setup``. An empty split is accepted only where its fraction argument is 0 (asked
        for: ``test_fraction=0``).
        """
        name = type(self).__name__
        for split, dataset in self.datasets.items():
            try:
                size = len(dataset)  # type: ignore[arg-type]
            except TypeError:
                continue
            fraction = f"{split}_fraction"
            if size == 0 and self.hparams.get(fraction) != 0:
                given = self.hparams.get(fraction)
                why = (
                    f" {fraction}={given} of the data rounds to zero samples: raise {fraction}"
                    if given is not None
                    else " give it samples"
                )
                if split == "train" and given is None:
                    why = " training needs samples: check the data folder, the split column or the data set given"
                raise SplitError(f"{name}: the {split} split is empty (0 samples);{why}.")
            if split in self.two_class_splits and size:
                labels = _split_labels(dataset)
                if labels is not None and len(set(labels)) < 2:
                    names = getattr(self, "class_names", None) or ()
                    shown = f"{labels[0]} ({names[labels[0]]!r})" if 0 <= labels[0] < len(names) else f"{labels[0]}"
                    raise SplitError(
                        f"{name}: the {split} split holds {size} samples of class {shown} only; its metric (e.g. "
                        f"the AUROC) needs both classes. {self.one_sided_split_fix(split)}"
                    )

    def one_sided_split_fix(self, split: str) -> str:
        """How to give a one-sided ``split`` both classes (the last sentence of its :class:`SplitError`)."""
        return f"Add samples of the other class to the {split} split."

    @override
    def save_hyperparameters(
        self,
        *args: Any,
        ignore: Sequence[str] | str | None = None,
        frame: Any = None,
        logger: bool = True,
    ) -> None:
        """Lightning's ``save_hyperparameters``, then every path value stored as a string.

        An unset ``num_classes=None`` is not saved: Lightning refuses to log a model and a DataModule
        whose hyper-parameters share a key with different values (the model's ``num_classes``).
        """
        if frame is None:  # Lightning reads the caller's arguments from the frame that called it
            frame = inspect.currentframe().f_back  # type: ignore[union-attr]
        if frame is not None and "num_classes" in frame.f_locals and frame.f_locals["num_classes"] is None:
            ignore = [*([ignore] if isinstance(ignore, str) else ignore or ()), "num_classes"]
        super().save_hyperparameters(*args, ignore=ignore, frame=frame, logger=logger)
        for key, value in list(self.hparams.items()):
            if isinstance(value, os.PathLike):  # a Path would not load with torch.load(weights_only=True)
                self.hparams[key] = os.fspath(value)

    @property
    def eval_batch_size(self) -> int:
        """Validation/test/predict batch size: the ``eval_batch_size`` argument, else ``batch_size``."""
        return get_option(self, "eval_batch_size") or self.batch_size

    @eval_batch_size.setter
    def eval_batch_size(self, value: int | None) -> None:
        set_option(self, "eval_batch_size", value)

    @property
    def persistent_workers(self) -> bool:
        """DataLoader ``persistent_workers``: the argument, and only with ``num_workers > 0``."""
        return bool(get_option(self, "persistent_workers", False)) and self.num_workers > 0

    @persistent_workers.setter
    def persistent_workers(self, value: bool) -> None:
        set_option(self, "persistent_workers", value)

    @property
    def root(self) -> Path:
        """The data folder: the ``root`` argument, ``~`` expanded (for the DataModules that read files)."""
        return Path(self.hparams.root).expanduser()

    # num_classes ---------------------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """Number of classes: found in the data by ``setup``, else the ``num_classes`` argument (see the class)."""
        found = self.num_classes_found()
        if found is not None:
            return found
        given = get_option(self, "num_classes")
        if given is not None:
            return int(given)
        raise NumClassesUnknownError(
            f"{type(self).__name__}.num_classes is read from the data by setup(), which has not run yet. Call "
            f"setup() first, or pass num_classes=<N> to {type(self).__name__} so it is known at construction "
            "(setup then checks it against the data)."
        )

    @num_classes.setter
    def num_classes(self, value: int) -> None:
        set_option(self, "num_classes", value)

    def num_classes_found(self) -> int | None:
        """The number of classes the data showed, or ``None`` before it was read (override where it is read)."""
        return None

    def check_num_classes(self, found: int, where: str) -> None:
        """Refuse a ``num_classes`` argument that differs from the ``found`` classes (``where``: their source)."""
        given = self.hparams.get("num_classes")
        if given is not None and int(given) != found:
            raise ValueError(
                f"{type(self).__name__}: {where} holds {found} classes but num_classes={given} was given. "
                f"Pass num_classes={found}, or leave it unset to take the data's count."
            )

    # loaders -------------------------------------------------------------------------------------------------

    def train_sampler(self, dataset: Dataset) -> Sampler[int]:
        """The training order: a function of ``seed`` and the epoch, so a resumed run sees the same batches."""
        return EpochShuffleSampler(len(dataset), self.seed)  # type: ignore[arg-type]

    def _loader(self, split: str, train: bool) -> DataLoader:
        if not self.datasets:
            self.setup()
        dataset = self.datasets[split]
        return (ResumableDataLoader if train else DataLoader)(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=self._training_sampler(dataset) if train else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=type(self).collate_fn,  # read off the class: a function attribute would bind to self
            **(self.train_loader_options() if train else {}),
        )

    def train_loader_options(self) -> dict[str, Any]:
        """Further ``DataLoader`` arguments of the training loader (e.g. ``drop_last``); none by default."""
        return {}

    def evaluation_dataset(self, split: str) -> Dataset:
        """``split``'s data set as evaluation sees it: for ``train``, the same samples with the evaluation transform.

        What monitors measure the training points on (clean images, as the papers' code does, not the
        random crops and flips the training loader draws). A training set without a ``transform``
        attribute, or a DataModule without :meth:`evaluation_transform`, is returned as it is.

        Example::

            >>> from lightning_regs.datamodules import DigitsDataModule
            >>> dm = DigitsDataModule()
            >>> dm.setup("fit")
            >>> dm.evaluation_dataset("train") is dm.datasets["train"]  # digits does not augment
            True
        """
        if not self.datasets:
            self.setup()
        dataset = self.datasets[split]
        transform = self.evaluation_transform()
        if split != "train" or transform is None or not hasattr(dataset, "transform"):
            return dataset
        view = copy.copy(dataset)
        view.transform = transform
        return view

    def evaluation_transform(self) -> Callable[..., Any] | None:
        """The transform of the evaluation splits (``eval_transform`` where the subclass has one)."""
        return getattr(self, "eval_transform", None)

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    @override
    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    # state ---------------------------------------------------------------------------------------------------

    def extra_state(self) -> dict[str, Any]:
        """Subclass state beyond the arguments and split indices (tensors and builtins; no key ends in ``_indices``)."""
        return {}

    def load_extra_state(self, state_dict: Mapping[str, Any]) -> None:
        """Check and restore :meth:`extra_state`; raise, before changing anything, on a state this module cannot use."""


def _checked_setup(setup: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(setup)
    def checked(self: SplitDataModule, *args: Any, **kwargs: Any) -> None:
        outermost = not self.__dict__.get("_in_setup", False)
        self.__dict__["_in_setup"] = True
        try:
            setup(self, *args, **kwargs)
        finally:
            if outermost:
                self.__dict__["_in_setup"] = False
        if outermost and self.datasets:
            self.check_splits()

    return checked


def _split_labels(dataset: Any) -> list[int] | None:
    labels = _dataset_labels(dataset)  # targets, labels, TensorDataset's tensors[1], through Subset/IndexedDataset
    return None if labels is None else [int(v) for v in labels.reshape(-1).tolist()]
