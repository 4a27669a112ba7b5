"""Slide features on disk: one file per slide (``.pt``, or CLAM's ``.h5`` through h5py), read and checked lazily.

Example::

    >>> import tempfile, torch
    >>> folder = Path(tempfile.mkdtemp())
    >>> torch.save(torch.ones(3, 4), folder / "slide_1.pt")
    >>> load_features(folder / "slide_1.pt").shape
    torch.Size([3, 4])
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from lightning_regs.datamodules.indexed import indexed_sample

__all__ = ["SUFFIXES", "load_features"]

SUFFIXES = (".pt", ".h5")
_FEATURES_KEY = "features"  # the tensor of a dict .pt file, and the dataset of a CLAM .h5 file
_FIX_FILE = "Extract this slide's features again, or remove its row from the CSV."


def _import_h5py(example: Path) -> Any:
    try:
        import h5py
    except ImportError as error:
        raise ImportError(
            f"{example} is an HDF5 features file (CLAM's h5_files), which needs the optional package h5py: "
            "pip install h5py (or convert the files to .pt with torch.save)."
        ) from error
    return h5py


def _read_content(path: Path) -> Any:
    """What a features file holds: a tensor or a dict (.pt, never unpickling arbitrary objects), a tensor (.h5)."""
    if path.suffix == ".h5":
        h5py = _import_h5py(path)
        try:
            with h5py.File(path, "r") as handle:
                if _FEATURES_KEY not in handle:
                    raise ValueError(
                        f"{path} has no '{_FEATURES_KEY}' dataset (it holds {sorted(handle)}); CLAM's h5 files store "
                        f"the patch features as '{_FEATURES_KEY}' (N, D). {_FIX_FILE}"
                    )
                return torch.from_numpy(handle[_FEATURES_KEY][()])
        except (OSError, TypeError) as error:
            raise ValueError(f"{path} cannot be read as an HDF5 features file ({error}). {_FIX_FILE}") from error
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, AttributeError) as error:
        raise ValueError(
            f"{path} cannot be read as a features file ({type(error).__name__}: {str(error).splitlines()[0]}). It must "
            "be torch.save of a float tensor (N, D) or of a dict of tensors with 'features' (N, D); files are loaded "
            f"with torch.load(weights_only=True), which refuses other pickled objects. {_FIX_FILE}"
        ) from error


def load_features(path: str | os.PathLike, feature_dim: int | None = None, reference: str = "") -> torch.Tensor:
    """The ``(N, D)`` float32 features of one slide's file; any other content is a ``ValueError`` naming the file.

    Args:
        path: a ``.pt`` file (a float tensor ``(N, D)``, or a dict with ``"features"``) or a CLAM ``.h5`` file.
        feature_dim: the width ``D`` every slide has (``None``: not checked).
        reference: the file ``feature_dim`` was read from, for the error.
    """
    path = Path(path)
    content = _read_content(path)
    if isinstance(content, Mapping):
        features = content.get(_FEATURES_KEY)
        if not isinstance(features, torch.Tensor):
            raise ValueError(
                f"{path} holds a dict with keys {sorted(map(str, content))} but no '{_FEATURES_KEY}' tensor. "
                f"Save the patch features under '{_FEATURES_KEY}' (N, D) (coordinates may go under 'coords')."
            )
    elif isinstance(content, torch.Tensor):
        features = content
    else:
        raise ValueError(
            f"{path} holds a {type(content).__name__}, not a float tensor (N, D) or a dict with '{_FEATURES_KEY}'. "
            f"{_FIX_FILE}"
        )
    if features.dim() != 2 or not features.is_floating_point():
        raise ValueError(
            f"{path} holds features of shape {tuple(features.shape)} and dtype {features.dtype}: a slide's features "
            f"are a float tensor (N, D), one row per patch. {_FIX_FILE}"
        )
    if features.shape[0] == 0:
        raise ValueError(f"{path} holds no patches (N = 0): the slide has no features to learn from. {_FIX_FILE}")
    if feature_dim is not None and features.shape[1] != feature_dim:
        raise ValueError(
            f"{path} holds features of width D={features.shape[1]}, but the other slides' are {feature_dim} wide "
            f"(read from {reference or 'the first training slide'}): every slide must come from the same feature "
            f"extractor. {_FIX_FILE}"
        )
    features = features.detach().to(torch.float32)
    finite = torch.isfinite(features)
    if not bool(finite.all()):
        row = int((~finite).any(dim=1).nonzero()[0])
        raise ValueError(
            f"{path}: {int((~finite).sum())} of its {features.numel()} feature values are not finite (NaN or inf), "
            f"the first in patch row {row}. {_FIX_FILE}"
        )
    return features.contiguous()


class _SlideBags(Dataset):
    """One split's slides: sample ``i`` is the bag of slide ``slide_ids[i]``, read from ``paths[i]`` when asked."""

    def __init__(
        self, slide_ids: Sequence[str], paths: Sequence[Path], targets: Sequence[int], feature_dim: int, reference: str
    ) -> None:
        self.slide_ids = list(slide_ids)
        self.paths = list(paths)
        self.targets = torch.tensor(list(targets), dtype=torch.long)
        self.feature_dim = feature_dim
        self.reference = reference

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        features = load_features(self.paths[index], self.feature_dim, self.reference)
        return indexed_sample(features, self.targets[index].clone(), index)


def _file_record(path: Path, digest: bool) -> tuple[int, str]:
    """``(size, sha256 prefix of the bytes)`` of one file; the digest is ``""`` without ``digest``."""
    size = path.stat().st_size
    if not digest:
        return size, ""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    return size, hasher.hexdigest()[:16]
