"""What a training set is, in a few bytes: its size and digests of its labels and files, saved beside per-sample state.

State keyed by sample index (PS-KD's table, a DataModule's split indices) is only meaningful on the data it was
made on. A fingerprint saved with it lets a resumed run check that row ``i`` is still the same sample, cheaply:
no image is read, only what the data set holds in memory (``targets``; ``paths`` or ``items`` of file-backed sets).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np
import torch

__all__ = ["data_fingerprint", "fingerprint_difference"]


def data_fingerprint(dataset: Any) -> dict[str, Any]:
    """``{"size": N, "labels": digest, "files": digest}`` of a data set (digests only where it exposes them).

    Labels come from ``targets`` (lightning_regs data sets, torchvision's), ``tensors[1]`` (``TensorDataset``) or
    the wrapped ``dataset`` of an :class:`~lightning_regs.datamodules.IndexedDataset` or ``Subset`` (with its
    ``indices``); files from ``paths`` or ``items`` (the last two path parts, so a moved data root still matches).

    Example::

        >>> from torch.utils.data import TensorDataset
        >>> a = data_fingerprint(TensorDataset(torch.zeros(3, 2), torch.tensor([0, 1, 1])))
        >>> b = data_fingerprint(TensorDataset(torch.zeros(3, 2), torch.tensor([0, 1, 2])))
        >>> a["size"], a["labels"] == b["labels"]
        (3, False)
    """
    fingerprint: dict[str, Any] = {"size": len(dataset)}
    labels = _labels(dataset)
    if labels is not None:
        fingerprint["labels"] = _digest(np.ascontiguousarray(labels.astype(np.int64)).tobytes())
    files = _files(dataset)
    if files is not None:
        fingerprint["files"] = _digest("\n".join("/".join(PurePath(str(f)).parts[-2:]) for f in files).encode())
    return fingerprint


def fingerprint_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """What differs between two fingerprints, in words (``None``: the same data as far as both can tell).

    Example::

        >>> fingerprint_difference({"size": 3, "labels": "ab"}, {"size": 4, "labels": "ab"})
        'the size changed from 3 to 4 samples'
    """
    changes = []
    if saved.get("size") != current.get("size"):
        changes.append(f"the size changed from {saved.get('size')} to {current.get('size')} samples")
    for key, what in (("labels", "the labels"), ("files", "the file list")):
        if key in saved and key in current and saved[key] != current[key]:
            changes.append(f"{what} differ")
    return ", ".join(changes) or None


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _labels(dataset: Any) -> np.ndarray | None:
    for attribute in ("targets", "labels"):
        value = getattr(dataset, attribute, None)
        if value is not None:
            try:
                return np.asarray(torch.as_tensor(value).cpu())
            except (TypeError, ValueError, RuntimeError):
                return None
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, tuple) and len(tensors) >= 2:
        return np.asarray(tensors[1].cpu())
    inner = getattr(dataset, "dataset", None)
    if inner is not None:
        labels = _labels(inner)
        indices = getattr(dataset, "indices", None)
        if labels is not None and indices is not None:
            return labels[np.asarray(indices)]
        return labels if indices is None and labels is not None and len(labels) == len(dataset) else None
    return None


def _files(dataset: Any) -> list[Any] | None:
    paths = getattr(dataset, "paths", None)
    if paths is not None:
        return list(paths)
    items = getattr(dataset, "items", None)
    if isinstance(items, (list, tuple)) and items and isinstance(items[0], (list, tuple)):
        return [item[0] for item in items]
    inner = getattr(dataset, "dataset", None)
    if inner is not None and getattr(dataset, "indices", None) is None:
        return _files(inner)
    return None
