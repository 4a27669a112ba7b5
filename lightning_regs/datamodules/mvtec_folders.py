"""The MVTec AD folder layout: its 15 categories, the check and scan of a category folder, reading its PNGs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import v2

from lightning_regs.datamodules.files import RootGuard, open_image

__all__ = ["CATEGORIES", "LAYOUT", "category_names", "read_png", "scan_category"]

CATEGORIES = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)
_URL = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
LAYOUT = (
    "Expected the MVTec AD layout (one folder per category under root):\n"
    "  <root>/<category>/train/good/000.png ...\n"
    "  <root>/<category>/test/good/000.png ...\n"
    "  <root>/<category>/test/<defect>/000.png ...\n"
    "  <root>/<category>/ground_truth/<defect>/000_mask.png ...  (one mask per anomalous test image)\n"
    f"Get the data by hand from {_URL} (licence CC BY-NC-SA 4.0, non-commercial; the download address has "
    "moved before, so it is not fetched automatically) and extract <category>.tar.xz (or the full archive) into root."
)


def read_png(path: Path, mode: str) -> torch.Tensor:
    """Decode an image file to a ``(C, H, W)`` uint8 tensor in PIL ``mode`` ("RGB" or "L").

    Raises:
        UnreadableImageError: (an ``OSError``) the file is truncated, damaged or not an image; names the file.
    """
    return v2.functional.pil_to_tensor(open_image(path, mode))


def _pngs(folder: Path, guard: RootGuard, what: str) -> list[tuple[Path, Path]]:
    """``(path, resolved path)`` of the ``.png`` files of ``folder``, sorted by name, held inside the guard's root."""
    found = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() != ".png":
            continue
        real = guard.contain(path, what)  # before is_file(): a symlink out of the root is refused, not skipped
        if real.is_file():
            found.append((path, real))
    return found


def scan_category(
    category_dir: Path, root: Path | None = None
) -> tuple[list[Path], list[tuple[Path, Path | None, str]]]:
    """The train images and ``(image, mask or None, defect)`` test triples of one category folder.

    Masks are paired with images by file stem (``000.png`` with ``000_mask.png``); every problem found
    is listed in one ``FileNotFoundError``/``ValueError`` with the expected layout. Every folder and
    file is resolved and must stay inside ``root`` (default: the category folder's parent): a symlink
    that leads out of it (category, split, defect or mask folder, image or mask file) is an
    :class:`~lightning_regs.datamodules.files.OutsideRootError` naming the path and the root. The
    returned paths are the resolved ones, so that what is read is what was checked.
    """
    category_dir = Path(category_dir)
    guard = RootGuard(category_dir.parent if root is None else root)
    guard.contain(category_dir, "The MVTec AD category folder")
    problems: list[str] = []
    train_dir, test_dir, truth_dir = (
        category_dir / "train" / "good",
        category_dir / "test",
        category_dir / "ground_truth",
    )
    for folder in (category_dir / "train", train_dir, test_dir, truth_dir):
        if folder.exists() or folder.is_symlink():
            guard.contain(folder, "The MVTec AD folder")
    train = [real for _, real in _pngs(train_dir, guard, "The MVTec AD training image")] if train_dir.is_dir() else []
    if not train:
        problems.append(f"no training images: {train_dir} is missing or holds no .png files")
    test: list[tuple[Path, Path | None, str]] = []
    defects = []
    if test_dir.is_dir():
        for folder in sorted(test_dir.iterdir()):
            if folder.is_symlink():
                guard.contain(folder, "The MVTec AD test folder")
            if folder.is_dir():
                defects.append(folder.name)
    if not test_dir.is_dir():
        problems.append(f"{test_dir} is missing")
    elif "good" not in defects:
        problems.append(f"{test_dir / 'good'} is missing (the normal test images)")
    if test_dir.is_dir() and not [d for d in defects if d != "good"]:
        problems.append(f"{test_dir} has no defect folder besides 'good'")
    for defect in defects:
        images = _pngs(test_dir / defect, guard, "The MVTec AD test image")
        if not images:
            problems.append(f"{test_dir / defect} holds no .png images")
        if defect == "good":
            test.extend((real, None, defect) for _, real in images)
            continue
        mask_dir = truth_dir / defect
        if mask_dir.is_symlink():
            guard.contain(mask_dir, "The MVTec AD mask folder")
        if not mask_dir.is_dir():
            problems.append(f"{mask_dir} is missing (the masks of test/{defect})")
            continue
        masks = {mask.stem: (mask, real) for mask, real in _pngs(mask_dir, guard, "The MVTec AD mask")}
        for image, real in images:
            mask = masks.pop(f"{image.stem}_mask", None)
            if mask is None:
                problems.append(f"no mask for {image}: expected {mask_dir / (image.stem + '_mask.png')}")
            test.append((real, None if mask is None else mask[1], defect))
        problems.extend(
            f"mask {mask} has no test image (expected {test_dir / defect / (stem.removesuffix('_mask') + '.png')})"
            for stem, (mask, _) in sorted(masks.items())
        )
    if truth_dir.is_dir():
        problems.extend(
            f"{truth_dir / d.name} has no matching test folder {test_dir / d.name}"
            for d in sorted(truth_dir.iterdir())
            if d.is_dir() and d.name not in defects
        )
    if problems:
        raise ValueError(f"MVTec AD category {category_dir} is malformed:\n- " + "\n- ".join(problems) + "\n" + LAYOUT)
    return train, test


def category_names(owner: str, category: Any, accepted: Sequence[str], root: Path | None = None) -> tuple[str, ...]:
    """The categories a DataModule reads: ``category`` as a tuple, none twice, each one of ``accepted`` or, when
    ``root`` is given, a folder of ``root`` (your own data in the MVTec AD layout)."""
    names = (category,) if isinstance(category, str) else category
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) and n for n in names):
        unknown = [n for n in names if n not in accepted and (root is None or not (Path(root) / n).is_dir())]
        if unknown:
            own = f", or a folder of {root} in the MVTec AD layout ({Path(root) / unknown[0]} is none)" if root else ""
            raise ValueError(f"Unknown MVTec AD category {unknown[0]!r}; choose one of {', '.join(accepted)}{own}.")
        if len(set(names)) != len(names):
            raise ValueError(f"{owner}: category lists a category twice: {list(names)}.")
        return tuple(names)
    raise ValueError(
        f"{owner}: category must be a category name or a non-empty list of them (multi-class), got {category!r}; "
        f"choose from {', '.join(accepted)}."
    )
