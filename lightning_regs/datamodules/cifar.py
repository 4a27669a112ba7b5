"""CIFAR-10 and CIFAR-100 from the official python tarballs, verified by sha256 and loaded without unsafe pickle."""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms import v2

from lightning_regs.batch import IMAGE, INDEX, TARGET
from lightning_regs.datamodules.base import SplitDataModule, hparam
from lightning_regs.datamodules.download import download_file, extract_archive, remove_interrupted

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule", "SharedReferenceError", "load_cifar_pickle"]

_MEMO_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")
_PLAIN_DTYPE = re.compile(r"[biuf][1248]")  # bool, integers and floats: all a CIFAR batch holds
_MALFORMED = (
    "The file is truncated, damaged or not an official CIFAR batch: delete the folder and extract the tarball again."
)


class _NdarrayGlobal:
    """What ``numpy.ndarray`` unpickles to: a marker that ``_reconstruct`` expects, never an array constructor."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise pickle.UnpicklingError("the pickle calls numpy.ndarray directly, which a CIFAR batch never does")


class _DtypeSpec:
    """What ``numpy.dtype(code, align, copy)`` unpickles to: a plain numeric type code and a byte order, not numpy's."""

    def __init__(self, code: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(code, str) or not _PLAIN_DTYPE.fullmatch(code):
            raise pickle.UnpicklingError(f"the dtype {code!r} is not a plain bool, integer or float type")
        self.code, self.byteorder = code, "="

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags); only the byte order may be set
        if not isinstance(state, tuple) or len(state) < 5 or state[1] not in "<>|=" or state[2:5] != (None,) * 3:
            raise pickle.UnpicklingError(f"the dtype state {state!r} is not that of a plain numeric type")
        self.byteorder = state[1] if state[1] in "<>" else "="

    def to_numpy(self) -> np.dtype:
        return np.dtype(self.code).newbyteorder(self.byteorder)


class _ArraySpec:
    """What ``_reconstruct(ndarray, ...)`` unpickles to: the array's shape, dtype and bytes, checked, no numpy object.

    numpy's own reconstruction allocates what the pickle asks for (shape and item size) before it
    sees any data; here the data must already be in the file, byte for byte, so no array can need
    more memory than the file's size.
    """

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # (version, shape, dtype, is_fortran, data)
        if not isinstance(state, tuple) or len(state) != 4:
            raise pickle.UnpicklingError("an array's state is not (shape, dtype, is_fortran, data)")
        shape, dtype, fortran, raw = state
        if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise pickle.UnpicklingError(f"an array's shape {shape!r} is not a tuple of sizes")
        if not isinstance(dtype, _DtypeSpec) or not isinstance(raw, bytes | str):
            raise pickle.UnpicklingError("an array's state lacks a plain numeric dtype or its raw bytes")
        raw = raw.encode("latin1") if isinstance(raw, str) else raw  # Python 2 strings arrive as latin-1 text
        dtype = dtype.to_numpy()
        needed = math.prod(shape) * dtype.itemsize
        if needed != len(raw):
            raise pickle.UnpicklingError(
                f"an array of shape {shape} and dtype {dtype} needs {needed:,} bytes but the file gives it {len(raw):,}"
            )
        self.array = np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C").copy()


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _ArraySpec:
    if subtype is not _NdarrayGlobal:
        raise pickle.UnpicklingError(f"numpy's _reconstruct is called with {subtype!r}, not numpy.ndarray")
    return _ArraySpec()  # shape and typecode are placeholders in numpy's own pickles; the state holds the real ones


# The official batches were pickled by Python 2 and only reference these globals; anything else is refused.
# None of them runs numpy code on the file's bytes: they build the checked stand-ins above.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NdarrayGlobal,
    ("numpy", "dtype"): _DtypeSpec,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle the global {module}.{name}: a CIFAR batch only references numpy's array "
                "reconstruction"
            ) from None


def _check_opcodes(data: bytes) -> None:
    """Refuse a pickle that would make the unpickler allocate more than the file holds, before it runs.

    The unpickler allocates what a counted opcode announces (``BINBYTES8``: up to 2**64 bytes) before
    reading it, and grows its memo table to the largest index put. ``pickletools.genops`` reads each
    announced length from the data (a length past the end fails), and memo indices must come in
    order, as every pickler writes them.
    """
    puts = 0
    for opcode, argument, position in pickletools.genops(data):
        if opcode.name in _MEMO_PUTS:
            if argument > puts:
                raise pickle.UnpicklingError(f"the memo index {argument} at byte {position} skips ahead of {puts}")
            puts += argument == puts
        elif opcode.name == "MEMOIZE":
            puts += 1
        elif opcode.name == "FRAME" and argument > len(data) - position:
            raise pickle.UnpicklingError(f"the frame at byte {position} announces {argument:,} bytes past the end")


_MAX_DEPTH = 8  # a CIFAR batch nests three deep: the dict, its lists, their strings
_SIZE_SLACK = 4096  # expanded size allowed beyond the file's length (a few shared short strings)


class SharedReferenceError(pickle.UnpicklingError):
    """A pickle whose result would expand beyond its file: a container reached twice (a shared reference, as a
    pickle memo makes them) or a cycle, nesting deeper than a CIFAR batch has, or leaves that add up to more than
    the file holds."""


class _Expansion:
    """Replaces array stand-ins by their arrays while bounding the result's expanded size and walk time.

    A pickle's memo lets one list appear many times, in lists that appear many times: 200 bytes can
    describe a structure whose walk (or ``np.asarray``) takes minutes and gigabytes. Without shared
    references every element costs at least a byte of the file, so the walk here visits every
    container once (a second visit is refused) and counts the expanded size (one per element, the
    length of each string, the bytes of each array, every time it appears) against the file's length.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.size, self.seen = limit, 0, set()

    def _take(self, count: int) -> None:
        self.size += count
        if self.size > self.limit:
            raise SharedReferenceError(
                f"the pickle expands to more than {self.limit:,} elements and bytes, more than its file holds: it "
                "repeats shared objects, which a CIFAR batch never does"
            )

    def __call__(self, value: Any, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise SharedReferenceError(f"the pickle nests containers more than {_MAX_DEPTH} deep (a CIFAR batch: 3)")
        if isinstance(value, _ArraySpec):
            if value.array is None:
                raise pickle.UnpicklingError("an array was created without its data")
            self._take(max(value.array.nbytes, 1))
            return value.array
        if isinstance(value, dict | list | tuple | set | frozenset):
            if value and id(value) in self.seen:  # empty containers cannot expand (and () is one shared object)
                raise SharedReferenceError(
                    f"the pickle holds a {type(value).__name__} more than once (a shared reference or a cycle), "
                    "which a CIFAR batch never does; walking it could expand it exponentially"
                )
            self.seen.add(id(value))
            self._take(1)
            if isinstance(value, dict):
                return {self(key, depth + 1): self(item, depth + 1) for key, item in value.items()}
            return type(value)(self(item, depth + 1) for item in value)
        self._take(max(len(value), 1) if isinstance(value, str | bytes | bytearray) else 1)
        return value


def load_cifar_pickle(path: str | Path) -> dict[str, Any]:
    """Load one CIFAR batch or meta file through an unpickler that allows numpy arrays only.

    Allocations are bounded by the file's size: counted opcodes must fit in the file, and an array
    is built from exactly the bytes the file holds for it (plain bool, integer or float types only).
    So is what it returns: a container met twice (a shared reference through the pickle memo, or a
    cycle) is refused, and the expanded size (elements, string lengths, array bytes, counted every time
    they appear) may not pass the file's length, so no walk of the result can take longer than a
    read of the file.

    Raises:
        pickle.UnpicklingError: naming ``path``: the file is empty, truncated or damaged, references
            any other global (e.g. ``os.system``), or asks for more memory than it holds.
        SharedReferenceError: (a ``pickle.UnpicklingError``) naming ``path``: the result shares a
            container, nests deeper than a CIFAR batch, or expands beyond the file's length.
    """
    data = Path(path).read_bytes()
    if not data:
        raise pickle.UnpicklingError(f"{path} is empty (0 bytes), as a copy cut short leaves it. {_MALFORMED}")
    try:
        _check_opcodes(data)
        loaded = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
        content = _Expansion(len(data) + _SIZE_SLACK)(loaded)
    except pickle.UnpicklingError as error:
        raise type(error)(f"{path}: {error}. {_MALFORMED}") from None
    except Exception as error:  # whatever else malformed bytes raise (EOFError, ValueError, MemoryError, ...)
        raise pickle.UnpicklingError(
            f"{path} is not a readable CIFAR batch pickle ({type(error).__name__}: {error}). {_MALFORMED}"
        ) from error
    if not isinstance(content, dict):
        raise pickle.UnpicklingError(f"{path} holds a {type(content).__name__}, not the dict of a CIFAR batch.")
    return content


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
        return {IMAGE: image, TARGET: self.targets[index], INDEX: torch.tensor(index, dtype=torch.long)}


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
                raise ValueError(f"{path} holds no images (its 'data' is empty). {_MALFORMED}")
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
