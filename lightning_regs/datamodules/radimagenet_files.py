"""RadImageNet's lists and files: the CSV and folder readers, the class index and the image samples.

What :class:`~lightning_regs.datamodules.radimagenet.RadImageNetDataModule` reads; every path resolves inside the root.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from lightning_regs.datamodules.files import RootGuard, open_image, read_json
from lightning_regs.datamodules.indexed import indexed_sample

__all__ = [
    "IMAGE_SUFFIXES",
    "LAYOUT",
    "LISTED_TWICE",
    "MODALITIES",
    "SPLITS",
    "RadImages",
    "keep_rows",
    "levels",
    "read_class_index",
    "read_csv",
]

SPLITS = ("train", "val", "test")
MODALITIES, IMAGE_SUFFIXES = ("CT", "MR", "US"), (".png", ".jpg", ".jpeg")
LAYOUT = (
    "Expected the RadImageNet layout:\n"
    "  <root>/RadiologyAI_train.csv, RadiologyAI_val.csv, RadiologyAI_test.csv  (columns filename,label; "
    "filenames relative to root)\n"
    "  <root>/radiology_ai/<CT|MR>/<anatomy>/<label>/<image>.png\n"
    "  <root>/radiology_ai/US/<label>/<image>.png  (ultrasound has no anatomy level)\n"
    "The data is available only by request under a data-use agreement (https://www.radimagenet.com, "
    "github.com/BMEII-AI/RadImageNet); it is never downloaded automatically."
)
LISTED_TWICE = (
    "\n(listed_twice: the same path in more than one CSV row, e.g. in train and test; 'drop' keeps its first "
    "listing, in train, then val, then test)"
)


def levels(filename: str) -> tuple[str, str]:
    """``(modality, anatomy)`` of a path ``.../<CT|MR>/<anatomy>/<label>/x.png`` or ``.../US/<label>/x.png``."""
    parts = Path(filename).parts
    for position, part in enumerate(parts[:-2]):
        if part.upper() in MODALITIES:
            modality = part.upper()
            return modality, modality if modality == "US" else f"{modality}/{parts[position + 1]}"
    raise ValueError(
        f"Cannot read the modality and anatomy of {filename!r}: no CT/MR/US folder in its path. Use "
        f"label_level='label', or keep the original paths.\n{LAYOUT}"
    )


def read_csv(path: Path, guard: RootGuard) -> list[tuple[str, str]]:
    """The ``(filename, label)`` rows of one split CSV; a malformed row, or one leading out of the root, is named."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (mode='csv').\n{LAYOUT}")
    rows = []
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        if not {"filename", "label"} <= set(header):
            raise ValueError(f"{path} has columns {header}; expected filename,label.\n{LAYOUT}")
        columns = (header.index("filename"), header.index("label"))
        for fields in reader:
            if not fields:
                continue  # a blank line
            where = f"{path}, line {reader.line_num}"
            problem = _row_problem(fields, len(header), columns)
            if problem:
                raise ValueError(f"{where}: {problem}; expected filename,label, got {fields!r}. Fix or remove the row.")
            filename, label = (fields[column] for column in columns)
            guard(filename, where)
            rows.append((filename, label))
    return rows


def _row_problem(fields: list[str], width: int, columns: tuple[int, int]) -> str | None:
    """What is wrong with one CSV row of ``width`` columns (``columns``: where filename and label are), or None."""
    if len(fields) != width:
        return f"has {len(fields)} field{'s' if len(fields) != 1 else ''} under a header of {width}"
    for name, column in zip(("filename", "label"), columns, strict=True):
        if not fields[column].strip():
            return f"has an empty {name}"
    return None


def keep_rows(
    rows: dict[str, list[tuple[str, str]]], drop: set[str], first_listing_only: bool
) -> dict[str, list[tuple[str, str]]]:
    """``rows`` without the files in ``drop`` and, with ``first_listing_only``, without repeated listings.

    The first listing of a file is kept: train, then val, then test, in row order (as for duplicates).
    """
    seen: set[str] = set()
    kept: dict[str, list[tuple[str, str]]] = {}
    for split in SPLITS:
        kept[split] = []
        for filename, label in rows[split]:
            if filename in drop or (first_listing_only and filename in seen):
                continue
            seen.add(filename)
            kept[split].append((filename, label))
    return kept


def read_class_index(path: Path, label_level: str) -> tuple[str, ...]:
    """The class names of a class-index JSON file (as :meth:`RadImageNetDataModule.save_class_index` writes it)."""
    fix = "Delete it (it is written again from the training split) or fix it."
    content = read_json(path, fix)
    names = content.get("class_names") if isinstance(content, dict) else None
    if not isinstance(names, list):
        raise ValueError(
            f"{path} must be a JSON object with a 'class_names' list (and 'label_level'), as save_class_index writes "
            f"it. {fix}"
        )
    level = content.get("label_level", label_level)
    repeated = next((name for name in names if names.count(name) > 1), None)
    if level != label_level:
        problem = f"was written at label_level={level!r}, not {label_level!r}: its classes mean something else"
    elif not names:
        problem = "'class_names' is empty"
    elif not all(isinstance(name, str) and name for name in names):
        problem = f"'class_names' must hold class names (strings), got {names[:5]}"
    elif repeated is not None:
        problem = f"'class_names' names {repeated!r} twice"
    else:
        return tuple(names)
    raise ValueError(f"{path}: {problem}. {fix}")


class RadImages(Dataset):
    def __init__(self, items: Sequence[tuple[Path, int]], transform: Callable[..., Any], mode: str) -> None:
        self.items = list(items)
        self.targets = torch.tensor([target for _, target in self.items], dtype=torch.long)
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path, target = self.items[index]
        pixels = v2.functional.pil_to_tensor(open_image(path, self.mode))  # a damaged file is an error naming it
        image = self.transform(tv_tensors.Image(pixels)).as_subclass(torch.Tensor)
        return indexed_sample(image, torch.tensor(target, dtype=torch.long), index)
