"""Tiny MVTec AD and RadImageNet trees in their real on-disk formats (PNG files, exact names, CSVs).

Pixel values identify each written image, so tests can check that what is loaded is what was written:
MVTec images are filled with :func:`mvtec_fill` and anomalous ones carry a 255 box at :func:`mvtec_box`;
RadImageNet images hold their id (``manifest["ids"][filename]``) at pixel (0, 0).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import torch
from PIL import Image

__all__ = [
    "RADIMAGENET_CLASSES",
    "make_mvtec",
    "make_radimagenet",
    "mvtec_box",
    "mvtec_fill",
    "write_grey_png",
    "write_radimagenet_csv",
]

MVTEC_SIZE = (20, 24)  # (H, W): not square, so a swapped axis shows
MVTEC_DEFECTS = ("broken_large", "contamination")


def mvtec_fill(split: str, defect_index: int, i: int) -> int:
    """Grey level of image ``i``: train 50+i, test/good 100+i, test/<defect d> 150+10·d+i (d from 0)."""
    return {"train": 50 + i, "good": 100 + i}.get(split, 150 + 10 * defect_index + i)


def mvtec_box(defect_index: int, i: int) -> tuple[slice, slice]:
    """Rows and columns of the anomalous box of test image ``i`` of defect ``defect_index``."""
    return slice(2 + i, 7 + i), slice(3 + 4 * defect_index, 9 + 4 * defect_index)


def _png(path: Path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = image.to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)


def write_grey_png(path: str | Path, seed: int = 0, size: int = 12) -> Path:
    """A readable, non-blank single-channel PNG of ``size``² random pixels at ``path`` (folders created)."""
    path = Path(path)
    _png(path, torch.randint(0, 256, (1, size, size), generator=torch.Generator().manual_seed(seed)))
    return path


def write_radimagenet_csv(root: str | Path, split: str, rows: list[tuple[str, ...]]) -> Path:
    """(Re)write ``RadiologyAI_<split>.csv`` with the ``filename,label`` header and ``rows`` as given.

    A row may have any number of fields, so tests can write malformed rows (e.g. a file name alone).
    """
    path = Path(root) / f"RadiologyAI_{split}.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "label"])
        writer.writerows(rows)
    return path


def make_mvtec(
    root: str | Path, category: str = "bottle", num_train: int = 3, num_good: int = 2, num_defect: int = 2
) -> Path:
    """Write ``<root>/<category>/{train/good, test/good, test/<defect>, ground_truth/<defect>}`` and return root.

    Defects are :data:`MVTEC_DEFECTS`; test/good images are single-channel PNGs (as MVTec's grey categories).
    """
    root = Path(root)
    base = root / category
    height, width = MVTEC_SIZE
    for i in range(num_train):
        _png(base / "train" / "good" / f"{i:03d}.png", torch.full((3, height, width), mvtec_fill("train", 0, i)))
    for i in range(num_good):
        _png(base / "test" / "good" / f"{i:03d}.png", torch.full((1, height, width), mvtec_fill("good", 0, i)))
    for d, defect in enumerate(MVTEC_DEFECTS):
        for i in range(num_defect):
            image = torch.full((3, height, width), mvtec_fill(defect, d, i))
            mask = torch.zeros(1, height, width)
            rows, cols = mvtec_box(d, i)
            image[:, rows, cols] = 255
            mask[:, rows, cols] = 255
            _png(base / "test" / defect / f"{i:03d}.png", image)
            _png(base / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return root


# (modality, anatomy or None, label): ultrasound has no anatomy level.
RADIMAGENET_CLASSES = (
    ("CT", "abd", "normal"),
    ("CT", "abd", "cyst"),
    ("MR", "knee", "acl"),
    ("US", None, "ovary"),
)


def _relative(modality: str, anatomy: str | None, label: str, name: str) -> str:
    parts = ["radiology_ai", modality, *([anatomy] if anatomy else []), label, name]
    return "/".join(parts)


def class_name(modality: str, anatomy: str | None, label: str) -> str:
    return "/".join([modality, *([anatomy] if anatomy else []), label])


def make_radimagenet(root: str | Path, defects: bool = False, per_split: tuple[int, int, int] = (3, 1, 1)) -> dict:
    """Write ``radiology_ai/<mod>/<anatomy>/<label>/*.png`` (``US/<label>``) and the three split CSVs.

    With ``defects=True`` the train CSV also lists a missing file, a blank image and an unreadable
    file, and a val image is a byte-for-byte copy of a train image of another class.

    Returns:
        A manifest: ``root``, ``rows`` (split -> list of ``(filename, label)`` as written in the CSV),
        ``ids`` (filename -> the value at pixel (0, 0)), ``classes`` (sorted class names) and, with
        defects, ``missing``, ``blank``, ``unreadable`` and ``duplicate`` (the pair of filenames).
    """
    root = Path(root)
    generator = torch.Generator().manual_seed(0)
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    ids: dict[str, int] = {}
    next_id = 1
    for modality, anatomy, label in RADIMAGENET_CLASSES:
        for split, count in zip(rows, per_split, strict=True):
            for i in range(count):
                filename = _relative(modality, anatomy, label, f"{split}_{i:03d}.png")
                image = torch.randint(0, 256, (1, 12, 12), generator=generator)
                image[0, 0, 0] = next_id
                ids[filename] = next_id
                next_id += 1
                _png(root / filename, image)
                rows[split].append((filename, class_name(modality, anatomy, label)))
    manifest: dict[str, Any] = {"root": root, "rows": rows, "ids": ids}
    manifest["classes"] = sorted({label for _, label in rows["train"]})
    if defects:
        missing = _relative("CT", "abd", "normal", "gone.png")
        blank = _relative("CT", "abd", "cyst", "blank.png")
        unreadable = _relative("MR", "knee", "acl", "broken.png")
        duplicate = _relative("US", None, "ovary", "copy_of_train_000.png")
        original = rows["train"][0][0]
        _png(root / blank, torch.full((1, 12, 12), 7))
        (root / unreadable).write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG body")
        shutil.copyfile(root / original, root / duplicate)
        ids[duplicate], ids[blank] = ids[original], 7
        rows["train"] += [(missing, "CT/abd/normal"), (blank, "CT/abd/cyst"), (unreadable, "MR/knee/acl")]
        rows["val"].append((duplicate, "US/ovary"))
        manifest.update(missing=missing, blank=blank, unreadable=unreadable, duplicate=(original, duplicate))
    for split, split_rows in rows.items():
        write_radimagenet_csv(root, split, split_rows)
    return manifest
