"""Serve any map-style data set as the dict samples of the batch contract (``image``, ``target``, ``index``)."""

from __future__ import annotations

import numbers
import operator
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from lightning_regs.batch import IMAGE, INDEX, TARGET

__all__ = ["IndexedDataset", "indexed_sample"]

_EXPECTED = (
    f"an (image, target) tuple or list (extra items are dropped unless `keys` names their position), or a dict "
    f"with '{IMAGE}' and '{TARGET}' (rename other keys with keys={{'img': '{IMAGE}', 'label': '{TARGET}'}})"
)


def indexed_sample(image: Any, target: Any, index: int, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One sample of the batch contract: ``{image, target, index}`` (``index`` an int64 0-d tensor), then ``extra``.

    The one place the library's own data sets build their sample dict; ``extra`` adds contract keys
    (``labeled``, ``true_target``, ``bag_id``, ...) after the three every sample has.

    Example::

        >>> sample = indexed_sample(torch.zeros(1, 2, 2), torch.tensor(3), 5)
        >>> sorted(sample), sample["index"].dtype, int(sample["index"])
        (['image', 'index', 'target'], torch.int64, 5)
    """
    sample = {IMAGE: image, TARGET: target, INDEX: torch.tensor(index, dtype=torch.long)}
    if extra:
        sample.update(extra)
    return sample


class IndexedDataset(Dataset):
    """Wrap a map-style data set so that ``ds[i]`` is ``{"image": ..., "target": int64 id, "index": i}``.

    What ``lightning_regs`` callbacks need from your own data: PS-KD keys its per-sample table by
    ``batch["index"]``, and every target-softening callback reads class ids from ``batch["target"]``.
    Samples may be

    * tuples or lists ``(image, target)`` or ``(image, target, *extra)`` (torchvision data sets,
      ``TensorDataset``): the extras are dropped unless ``keys`` maps their position to a name,
      e.g. ``keys={2: "mask"}``; ``keys={0: "target", 1: "image"}`` reads ``(target, image)`` pairs;
    * dicts with ``image`` and ``target``, or other keys renamed by ``keys``, e.g.
      ``keys={"img": "image", "label": "target"}``; keys not renamed are kept as they are.

    The image is passed through as the data set's transform left it; it must be something the
    DataLoader can collate (a tensor, not a PIL image: add ``transforms.ToTensor()`` or
    ``v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])``). The target must be one
    class id: a python or numpy integer, an integral float, or a one-element tensor, returned as an
    int64 0-d tensor. ``index`` is always the position ``i`` in this data set: an ``index`` the
    wrapped sample already has is overwritten, since callbacks key per-sample state by it.

    Args:
        dataset: any map-style data set (``__getitem__`` and ``__len__``).
        keys: how the sample's fields (tuple positions or dict keys) are named in the output.

    Example::

        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> ds = IndexedDataset(TensorDataset(torch.zeros(4, 1, 8, 8), torch.tensor([3, 1, 0, 2])))
        >>> sample = ds[1]
        >>> sorted(sample), int(sample["target"]), int(sample["index"])
        (['image', 'index', 'target'], 1, 1)
        >>> batch = next(iter(DataLoader(ds, batch_size=4)))
        >>> batch["image"].shape, batch["index"].tolist(), ds.num_classes
        (torch.Size([4, 1, 8, 8]), [0, 1, 2, 3], None)
    """

    def __init__(self, dataset: Any, keys: Mapping[int | str, str] | None = None) -> None:
        if isinstance(dataset, IterableDataset) or not (
            hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")
        ):
            raise TypeError(
                "IndexedDataset needs a map-style data set (with __getitem__ and __len__) so that every sample has "
                f"a stable position; got {type(dataset).__name__}. An IterableDataset has no positions: make it "
                "map-style or yield dicts with 'index' (the sample's position in the data set) yourself."
            )
        keys = dict(keys or {})
        for field, name in keys.items():
            if not isinstance(field, (int, str)) or not isinstance(name, str):
                raise TypeError(
                    f"keys maps tuple positions (int) or dict keys (str) to names (str); got {field!r}: {name!r}."
                )
            if name == INDEX:
                raise ValueError(f"keys maps {field!r} to '{INDEX}', which IndexedDataset always sets to the position.")
        self.dataset = dataset
        self.keys = keys

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        position = operator.index(index)
        if position < 0:
            position += len(self)
        sample = self._named_fields(self.dataset[position], position)
        sample[TARGET] = _class_id(sample[TARGET], position)
        sample[INDEX] = torch.tensor(position, dtype=torch.long)
        return sample

    @property
    def num_classes(self) -> int | None:
        """``len(classes)`` of the wrapped data set (or of one it wraps, e.g. via ``Subset``), else ``None``."""
        dataset = self.dataset
        while dataset is not None:
            classes = getattr(dataset, "classes", None)
            if classes is not None:
                return len(classes)
            dataset = getattr(dataset, "dataset", None)
        return None

    def _named_fields(self, sample: Any, position: int) -> dict[str, Any]:
        if isinstance(sample, Mapping):
            fields = {self.keys.get(key, key): value for key, value in sample.items()}
            found = f"a dict with keys {sorted(map(str, sample))}"
        elif isinstance(sample, (tuple, list)):
            names = {0: IMAGE, 1: TARGET, **self.keys}
            fields = {names[i]: value for i, value in enumerate(sample) if i in names}
            found = f"a {type(sample).__name__} of {len(sample)} items"
        else:
            fields, found = {}, f"a {type(sample).__name__}"
        if IMAGE not in fields or TARGET not in fields:
            raise TypeError(
                f"IndexedDataset: sample {position} of {type(self.dataset).__name__} is {found}; expected {_EXPECTED}."
            )
        pil = sys.modules.get("PIL.Image")  # a PIL image can only come from an imported PIL
        if pil is not None and isinstance(fields[IMAGE], pil.Image):
            raise TypeError(
                f"IndexedDataset: sample {position}'s image is a PIL image, which the DataLoader cannot collate. Give "
                "the data set a transform that ends with `transforms.ToTensor()` (or `v2.ToImage()` followed by "
                "`v2.ToDtype(torch.float32, scale=True)`)."
            )
        return fields


def _class_id(target: Any, position: int) -> torch.Tensor:
    """``target`` as an int64 0-d tensor; a named error for anything that is not one class id."""
    if isinstance(target, (numbers.Number, np.generic, np.ndarray)):
        target = torch.as_tensor(target)
    if not isinstance(target, torch.Tensor):
        raise TypeError(
            f"IndexedDataset: sample {position}'s target is a {type(target).__name__}; labels must be class ids "
            "(an int, a numpy integer or a one-element integer tensor). Map class names to ids with a target_transform."
        )
    if target.numel() != 1:
        raise ValueError(
            f"IndexedDataset: sample {position}'s target has shape {tuple(target.shape)}; labels must be class ids, "
            "one per sample. Soft or one-hot targets come from callbacks (e.g. LabelSmoothing), not from the data."
        )
    if target.is_floating_point() and not bool(target.isfinite().all() and (target == target.round()).all()):
        raise ValueError(
            f"IndexedDataset: sample {position}'s target is {target.item():g}; labels must be class ids (integers such "
            "as 0, 1, 2), not probabilities or regression values."
        )
    return target.reshape(()).long()
