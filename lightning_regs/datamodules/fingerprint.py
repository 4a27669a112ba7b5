"""What a data set is, in a few bytes: its size and digests of its labels, file names and content.

State keyed by sample index (PS-KD's table, a DataModule's split indices) is only meaningful on the data it was
made on. A fingerprint saved with it lets a resumed run check that row ``i`` is still the same sample: the same
labels, and the same *content* it is read from, so replaced pixels, two images of one class swapped or a shuffled
data set are refused, not only a changed size.

**What the content digest reads** (the first that applies; ``content_from = "arrays" | "files" | "items"`` on a data
set picks one):

* ``arrays``: the in-memory arrays the samples are sliced from (``images`` or ``data`` with one row per sample,
  ``TensorDataset.tensors``), hashed whole: a pass over memory (about 0.1 s for CIFAR's 50,000 images);
* ``files``: the files the samples are read from (``paths``; the path entries of ``items``, ``samples`` or ``imgs``
  as in MVTec, RadImageNet, ``ImageFolder``). Up to :data:`FULL_BYTES` in all, every byte; beyond, the size of every
  file (a ``stat``; a replaced or re-encoded image changes it) and every byte of a seeded sample of up to
  :data:`SAMPLE_SIZE` files within :data:`FULL_BYTES`;
* ``items``: ``dataset[i]`` itself (a user's data set that exposes neither): every item up to :data:`FULL_LIMIT`,
  else the seeded sample. Items are read under fixed random seeds, so random augmentations draw the same.

A sampled digest records its sample (``content_sample``: seed and indices) and the reading (``content_read``) in the
fingerprint, so the checkpoint says what was compared. ``Subset`` and
:class:`~lightning_regs.datamodules.IndexedDataset` are looked through to the data set they wrap.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import PurePath
from typing import Any

import numpy as np
import torch

__all__ = ["FULL_BYTES", "FULL_LIMIT", "SAMPLE_SEED", "SAMPLE_SIZE", "data_fingerprint", "fingerprint_difference"]

#: Data sets of up to this many items (read by ``dataset[i]``) have every one hashed; larger ones a seeded sample.
FULL_LIMIT = 4096
#: Items (or at most files) hashed in a larger data set.
SAMPLE_SIZE = 1024
#: File sets larger than this many bytes have every file's size and the bytes of a sample within it hashed.
FULL_BYTES = 256 * 2**20
#: Seed of that sample (saved with it).
SAMPLE_SEED = 0
_READERS = 8  # threads reading files


def data_fingerprint(dataset: Any) -> dict[str, Any]:
    """``{"size", "labels", "files", "content", "content_read"[, "content_sample"]}`` of a data set.

    Labels come from ``targets`` (lightning_regs data sets, torchvision's), ``tensors[1]`` (``TensorDataset``) or
    the wrapped ``dataset`` of an :class:`~lightning_regs.datamodules.IndexedDataset` or ``Subset`` (with its
    ``indices``); file names from ``paths`` or ``items`` (the last two path parts, so a moved data root still
    matches); the content as the module's docstring says.

    Example::

        >>> from torch.utils.data import TensorDataset
        >>> a = data_fingerprint(TensorDataset(torch.zeros(3, 2), torch.tensor([0, 1, 1])))
        >>> b = data_fingerprint(TensorDataset(torch.ones(3, 2), torch.tensor([0, 1, 1])))
        >>> a["size"], a["labels"] == b["labels"], a["content"] == b["content"], a["content_read"]
        (3, True, False, 'arrays: every byte')
    """
    fingerprint: dict[str, Any] = {"size": len(dataset)}
    labels = _labels(dataset)
    if labels is not None:
        fingerprint["labels"] = _digest(np.ascontiguousarray(labels.astype(np.int64)).tobytes())
    files = _files(dataset)
    if files is not None:
        fingerprint["files"] = _digest("\n".join(_last_two_parts(str(f)) for f in files).encode())
    fingerprint.update(_content(dataset))
    return fingerprint


def fingerprint_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """What differs between two fingerprints, in words (``None``: the same data as far as both can tell).

    The content is compared where both read the same kind of source (a checkpoint from before content digests has
    none).

    Example::

        >>> fingerprint_difference({"size": 3, "labels": "ab"}, {"size": 4, "labels": "ab"})
        'the size changed from 3 to 4 samples'
    """
    changes = []
    if saved.get("size") != current.get("size"):
        changes.append(f"the size changed from {saved.get('size')} to {current.get('size')} samples")
    for key, what in (("labels", "the labels differ"), ("files", "the file list differs")):
        if key in saved and key in current and saved[key] != current[key]:
            changes.append(what)
    same_kind = str(saved.get("content_read")).split(":")[0] == str(current.get("content_read")).split(":")[0]
    if "content" in saved and "content" in current and same_kind and saved["content"] != current["content"]:
        changes.append(f"the content differs (read from {current.get('content_read')})")
    return ", ".join(changes) or None


# labels and names --------------------------------------------------------------------------------------------


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


# content -----------------------------------------------------------------------------------------------------


def _content(dataset: Any) -> dict[str, Any]:
    """``{"content": digest, "content_read": how[, "content_sample": {...}]}`` (see the module docstring)."""
    source, rows = _content_source(dataset, None)
    size = len(dataset)
    if source[0] == "arrays":
        hasher = hashlib.sha256()
        for array in source[1]:
            _update_array(hasher, array if rows is None else array[torch.as_tensor(rows, dtype=torch.long)])
        return {"content": hasher.hexdigest()[:16], "content_read": "arrays: every byte"}
    if source[0] == "files":
        files = source[1] if rows is None else [source[1][i] for i in rows]
        return _files_content(files)
    return _items_content(dataset, size)


def _content_source(dataset: Any, rows: Sequence[int] | None) -> tuple[tuple[str, Any], Sequence[int] | None]:
    """Where ``dataset``'s samples are read from (``("arrays", [...])``, ``("files", [...])`` or ``("items", None)``),
    looking through ``Subset``/``IndexedDataset``; ``rows``: which rows of that source are this data set's, in order.
    """
    preferred = getattr(dataset, "content_from", None)
    size = len(dataset)
    if preferred in (None, "arrays"):
        arrays = _arrays(dataset, size)
        if arrays is not None:
            return ("arrays", arrays), rows
    if preferred in (None, "files"):
        files = _file_paths(dataset)
        if files is not None and len(files) == size:
            return ("files", files), rows
    if preferred is None:
        inner = getattr(dataset, "dataset", None)
        if inner is not None and hasattr(inner, "__len__") and hasattr(inner, "__getitem__"):
            indices = getattr(dataset, "indices", None)
            if indices is not None:
                mapped = [int(i) for i in indices]
                source, inner_rows = _content_source(inner, None)
                if source[0] != "items" and inner_rows is None:
                    return source, mapped if rows is None else [mapped[r] for r in rows]
            elif len(inner) == size:
                source, inner_rows = _content_source(inner, rows)
                if source[0] != "items":
                    return source, inner_rows
    return ("items", None), None


def _arrays(dataset: Any, size: int) -> list[Any] | None:
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, tuple) and tensors and all(isinstance(t, torch.Tensor) for t in tensors):
        return list(tensors)
    for name in ("images", "data"):
        value = getattr(dataset, name, None)
        if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim >= 1 and len(value) == size:
            return [value]
    return None


def _last_two_parts(path: str) -> str:
    """``"/".join(PurePath(path).parts[-2:])``, without building a path object for a plain POSIX path (1.35 M rows)."""
    plain = (
        os.sep == "/" and path.count("/") >= 2 and "//" not in path and "/./" not in path
        and not path.startswith("./") and not path.endswith(("/", "/."))
    )  # fmt: skip
    return "/".join(path.rsplit("/", 2)[-2:]) if plain else "/".join(PurePath(path).parts[-2:])


def _file_paths(dataset: Any) -> list[tuple[str, ...]] | None:
    """Each sample's files (as strings): ``paths``, or the path entries of each of ``items``/``samples``/``imgs``."""
    paths = getattr(dataset, "paths", None)
    if paths is not None and not isinstance(paths, (str, bytes)):
        try:
            return [(str(p),) for p in paths]
        except TypeError:
            return None
    for name in ("items", "samples", "imgs"):
        items = getattr(dataset, name, None)
        if isinstance(items, (list, tuple)) and items and isinstance(items[0], (list, tuple)):
            files = [tuple(os.fspath(part) for part in item if isinstance(part, (str, os.PathLike))) for item in items]
            if all(files):
                return files
    return None


def _update_array(hasher: Any, array: Any) -> None:
    if isinstance(array, torch.Tensor):
        tensor = array.detach().cpu().contiguous()
        hasher.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy().data if tensor.numel() else b"")
    else:
        array = np.ascontiguousarray(array)
        hasher.update(f"{array.shape}{array.dtype}".encode())
        hasher.update(array.tobytes() if array.dtype == object else array.data)


def _sample(size: int) -> list[int] | None:
    """The seeded sample of :data:`SAMPLE_SIZE` positions of a data set larger than :data:`FULL_LIMIT` (else None)."""
    if size <= FULL_LIMIT:
        return None
    order = torch.randperm(size, generator=torch.Generator().manual_seed(SAMPLE_SEED))
    return order[:SAMPLE_SIZE].sort().values.tolist()


def _chunks(items: Sequence[Any], size: int = 4096) -> list[Sequence[Any]]:
    # ThreadPoolExecutor.map ignores chunksize: one future an item costs more than a stat (1.35 M rows: minutes)
    return [items[start : start + size] for start in range(0, len(items), size)]


def _files_content(files: Sequence[tuple[str, ...]]) -> dict[str, Any]:
    with ThreadPoolExecutor(_READERS) as pool:
        size_chunks = pool.map(
            lambda groups: [[_file_size(path) for path in group] for group in groups], _chunks(files)
        )
        sizes = [group_sizes for chunk in size_chunks for group_sizes in chunk]
        total = sum(max(size, 0) for group in sizes for size in group)
        sample = None
        if total > FULL_BYTES:  # every size, and the bytes of a seeded sample within the budget
            sample, budget = [], FULL_BYTES
            order = torch.randperm(len(files), generator=torch.Generator().manual_seed(SAMPLE_SEED)).tolist()
            for i in order:
                cost = sum(max(size, 0) for size in sizes[i])
                if len(sample) >= SAMPLE_SIZE or (sample and cost > budget):
                    break
                sample.append(i)
                budget -= cost
            sample.sort()
        hasher = hashlib.sha256()
        hasher.update(repr(sizes).encode())
        chosen = files if sample is None else [files[i] for i in sample]
        digest_chunks = pool.map(lambda groups: [[_file_digest(path) for path in group] for group in groups],
                                 _chunks(chosen, 64))  # fmt: skip
        for digests in (digests for chunk in digest_chunks for digests in chunk):
            hasher.update("|".join(digests).encode())
    return _content_result(hasher, sample, "files: every byte", "files: every size, the bytes of {} sampled")


def _content_result(hasher: Any, sample: list[int] | None, whole: str, sampled: str) -> dict[str, Any]:
    """The content digest and how it was read (``sampled`` formats the sample's size); the sample when there is one."""
    result: dict[str, Any] = {"content": hasher.hexdigest()[:16]}
    if sample is None:
        result["content_read"] = whole
    else:
        result["content_read"] = f"{sampled.format(len(sample))} (seed {SAMPLE_SEED})"
        result["content_sample"] = {"seed": SAMPLE_SEED, "indices": sample}
    return result


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1  # missing: a difference of its own


def _file_digest(path: str) -> str:
    hasher = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                hasher.update(chunk)
    except OSError:
        return "missing"
    return hasher.hexdigest()


def _items_content(dataset: Any, size: int) -> dict[str, Any]:
    sample = _sample(size)
    hasher = hashlib.sha256()
    with _fixed_seeds():
        for index in range(size) if sample is None else sample:
            _update_item(hasher, dataset[index])
    return _content_result(hasher, sample, "items: every dataset[i]", "items: dataset[i] of {} sampled")


def _update_item(hasher: Any, item: Any) -> None:
    """Hash one sample: tensors and arrays by their bytes, containers element by element, PIL images by pixels."""
    if isinstance(item, (torch.Tensor, np.ndarray)):
        _update_array(hasher, item)
    elif isinstance(item, Mapping):
        for key in sorted(item, key=str):
            hasher.update(f"<{key}>".encode())
            _update_item(hasher, item[key])
    elif isinstance(item, (list, tuple)):
        hasher.update(f"[{len(item)}".encode())
        for element in item:
            _update_item(hasher, element)
    elif isinstance(item, (str, bytes, int, float, bool, type(None), np.generic)):
        hasher.update(repr(item).encode())
    elif hasattr(item, "tobytes") and hasattr(item, "size") and hasattr(item, "mode"):  # a PIL image
        hasher.update(f"{item.mode}{item.size}".encode())
        hasher.update(item.tobytes())
    else:
        try:
            hasher.update(pickle.dumps(item, protocol=4))
        except Exception:  # an object that cannot be serialized: its type at least
            hasher.update(type(item).__qualname__.encode())


@contextmanager
def _fixed_seeds() -> Iterator[None]:
    """Seed torch's, numpy's and Python's global RNGs for the reading, and give every one its state back after."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SAMPLE_SEED)
        random.seed(SAMPLE_SEED)
        np.random.seed(SAMPLE_SEED)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
