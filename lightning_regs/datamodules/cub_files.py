"""CUB-200-2011's text files and images: the tables, the boxes and the dict samples :class:`CUB200DataModule` serves.

Every check names the file and line at fault and says to extract ``CUB_200_2011.tgz`` again.
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms.v2.functional import pil_to_tensor

from lightning_regs.batch import LABELED, TRUE_TARGET
from lightning_regs.datamodules.files import open_image
from lightning_regs.datamodules.indexed import indexed_sample

__all__ = ["CUBImages", "check_boxes", "check_class_folders", "crop_bounds", "read_table"]

FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "bounding_boxes.txt")
SOURCE = (
    "CUB-200-2011 is not downloaded automatically (its old address is dead and no sha256 is established). "
    "Get CUB_200_2011.tgz from CaltechDATA (https://data.caltech.edu/records/65de6-vp158, md5 "
    "97eceeb196236b17998738112f37df78) and extract it into {root}, so that {root}/CUB_200_2011/ holds "
    "images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, bounding_boxes.txt and "
    "images/<class folder>/<image>.jpg."
)


class _Table(dict[int, tuple]):
    """``{id: values}`` read from one CUB text file, with the line each id was read from (for error messages)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.lines: dict[int, int] = {}

    def where(self, key: int) -> str:
        """``"<file>, line <n>"`` of ``key``."""
        return f"{self.path}, line {self.lines[key]}"


def read_table(path: Path, columns: int, kinds: tuple[type, ...]) -> _Table:
    """``{id: values}`` from a whitespace-separated CUB text file whose first column is a 1-based id."""
    rows = _Table(path)
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != columns:
                raise ValueError
            key = int(fields[0])
            values = tuple(kind(field) for kind, field in zip(kinds, fields[1:], strict=True))
        except ValueError:
            raise ValueError(
                f"{path}, line {number}: expected {columns} fields (<id> then {[k.__name__ for k in kinds]}), "
                f"got {line!r}. The file is malformed: extract CUB_200_2011.tgz again."
            ) from None
        if key in rows:
            raise ValueError(f"{path}, line {number}: the id {key} appears twice; extract CUB_200_2011.tgz again.")
        rows[key], rows.lines[key] = values, number
    if not rows:
        raise ValueError(
            f"{path} lists nothing (it is empty or blank). The file is malformed: extract CUB_200_2011.tgz again."
        )
    return rows


def crop_bounds(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` pixel bounds of ``box`` (x, y, w, h) cut to a ``width``×``height`` image.

    ``None`` when the box is not finite, or less than half of its width or height lies inside the
    image: a box for another image size (or another image) rather than one cut by the border.
    """
    if not all(math.isfinite(value) for value in box):
        return None
    x, y, w, h = box
    left, top = max(0, math.floor(x)), max(0, math.floor(y))
    right, bottom = min(width, max(left + 1, math.ceil(x + w))), min(height, max(top + 1, math.ceil(y + h)))
    if 2 * (right - left) < w or 2 * (bottom - top) < h:
        return None
    return top, bottom, left, right


def _box_error(where: str, image: str, box: tuple[float, ...], size: tuple[int, int]) -> ValueError:
    x, y, w, h = box
    return ValueError(
        f"{where}: the box of {image} is x={x!r}, y={y!r}, w={w!r}, h={h!r} but the image is {size[0]}×{size[1]} "
        "pixels: less than half of the box lies inside it (or a value is not a number). Boxes are in the pixels of "
        "the images as distributed: if the images were resized or replaced, extract CUB_200_2011.tgz again; or set "
        "crop_to_bbox=False."
    )


class CUBImages(Dataset):
    """JPEG files decoded with PIL into uint8 tensors, optionally cropped to their box, as dict samples."""

    def __init__(
        self,
        paths: np.ndarray,
        targets: torch.Tensor,
        transform: nn.Module | None,
        boxes: torch.Tensor | None = None,
        labeled: torch.Tensor | None = None,
        true_targets: torch.Tensor | None = None,
    ) -> None:
        # numpy strings, not a list: forked workers would copy a list of Python objects page by page
        self.paths, self.targets, self.transform, self.boxes, self.labeled = paths, targets, transform, boxes, labeled
        self.true_targets = true_targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        # PIL, as ImageFolder: torchvision.io's decoders are deprecated in favour of TorchCodec (not a dependency)
        image = pil_to_tensor(open_image(self.paths[index], "RGB"))  # a damaged file is an error naming it
        if self.boxes is not None:  # checked by setup; the file may have changed since
            box, size = tuple(self.boxes[index].tolist()), (image.shape[2], image.shape[1])
            bounds = crop_bounds(box, *size)
            if bounds is None:
                raise _box_error("Loading an image cropped to its box", str(self.paths[index]), box, size)
            top, bottom, left, right = bounds
            image = image[:, top:bottom, left:right]
        image = self.transform(image) if self.transform is not None else image.float().div_(255)
        extra = {} if self.labeled is None else {LABELED: self.labeled[index]}
        if self.true_targets is not None:
            extra[TRUE_TARGET] = self.true_targets[index]
        return indexed_sample(image, self.targets[index], index, extra)


def check_class_folders(ids: list[int], images: _Table, labels: _Table, class_folders: list[str]) -> None:
    """Every image lies in the folder of its class (``images.txt`` and ``image_class_labels.txt`` agree)."""
    for i in ids:
        folder, expected = PurePosixPath(images[i][0]).parent.as_posix(), class_folders[labels[i][0] - 1]
        if folder != expected:
            raise ValueError(
                f"image {i}: images.txt (line {images.lines[i]}) puts it in {folder!r} but image_class_labels.txt "
                f"(line {labels.lines[i]}) gives class {labels[i][0]} ({expected!r}). The two files disagree: "
                "extract CUB_200_2011.tgz again."
            )


def check_boxes(ids: list[int], images: _Table, boxes: _Table, paths: np.ndarray) -> None:
    """Every box is positive and lies (at least half) inside its image, whose size is read from the file header."""
    for i, path in zip(ids, paths, strict=True):
        box = boxes[i]
        if box[2] <= 0 or box[3] <= 0:
            raise ValueError(f"{boxes.where(i)}: the box {box} has a non-positive width or height.")
        with Image.open(str(path)) as opened:  # reads the header only
            size = opened.size
        if crop_bounds(box, *size) is None:
            raise _box_error(boxes.where(i), f"image {i} ({images[i][0]})", box, size)
