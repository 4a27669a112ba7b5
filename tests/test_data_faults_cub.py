"""Fault injection on CUB-200-2011's text files: boxes outside their image, empty files, labels off their folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from lightning_regs.datamodules.cub import CUB200DataModule
from tests.helpers.fake_datasets_vision import write_cub

RAW = {"num_workers": 0, "eval_transform": v2.ToDtype(torch.float32, scale=True)}


@pytest.fixture
def cub(tmp_path):
    return write_cub(tmp_path, num_classes=4, per_class=4)  # 40×30 images, ids 1..16, odd ids train


def _set_line(folder: Path, name: str, number: int, text: str) -> None:
    path = folder / name
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "box",
    [
        "50.0 5.0 10.0 10.0",  # right of the image: a 3×30×0 crop before the fix
        "5.0 31.0 10.0 10.0",  # below it
        "35.0 5.0 30.0 10.0",  # five of its thirty columns inside: a silent 5-pixel sliver
        "nan 5.0 10.0 10.0",  # not a number: a crash in a worker
    ],
)
def test_a_box_outside_its_image_is_named_at_setup(tmp_path, cub, box):
    _set_line(cub["folder"], "bounding_boxes.txt", 2, f"2 {box}")
    x, y, w, h = box.split()
    pattern = (
        rf"bounding_boxes\.txt, line 2: the box of image 2 \(001\.Bird_1/Bird_1_0002\.jpg\) is "
        rf"x={x}, y={y}, w={w}, h={h} but the image is 40×30 pixels"
    )
    with pytest.raises(ValueError, match=pattern):
        CUB200DataModule(root=str(tmp_path), crop_to_bbox=True, **RAW).setup("test")


def test_an_image_changed_after_setup_is_named_when_loaded(tmp_path, cub):
    dm = CUB200DataModule(root=str(tmp_path), crop_to_bbox=True, **RAW)
    dm.setup("test")
    path = cub["folder"] / "images" / cub["paths"][1]  # image 2, the first test image
    Image.new("RGB", (4, 3), (10, 20, 30)).save(path)
    with pytest.raises(ValueError, match=rf"the box of {re.escape(str(path))} is x=.* but the image is 4×3 pixels"):
        dm.datasets["test"][0]


@pytest.mark.parametrize(
    "name", ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "bounding_boxes.txt"]
)
def test_an_empty_text_file_is_named(tmp_path, cub, name):
    (cub["folder"] / name).write_text("\n")
    with pytest.raises(ValueError, match=rf"{re.escape(name)} lists nothing.*extract CUB_200_2011\.tgz again"):
        CUB200DataModule(root=str(tmp_path), crop_to_bbox=True, **RAW).setup("fit")


def test_a_label_that_disagrees_with_its_class_folder_is_named(tmp_path, cub):
    _set_line(cub["folder"], "image_class_labels.txt", 3, "3 2")  # image 3 lies in 001.Bird_1
    pattern = (
        r"image 3: images\.txt \(line 3\) puts it in '001\.Bird_1' but image_class_labels\.txt \(line 3\) gives "
        r"class 2 \('002\.Bird_2'\)"
    )
    with pytest.raises(ValueError, match=pattern):
        CUB200DataModule(root=str(tmp_path), **RAW).setup("fit")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_a_malformed_gcd_split_file_is_named(tmp_path, cub, text):
    split_file = tmp_path / "split.json"
    split_file.write_text(text)
    with pytest.raises(ValueError, match=rf"{re.escape(str(split_file))}.*(not valid JSON|must be a JSON object)"):
        CUB200DataModule(root=str(tmp_path), gcd=True, gcd_split_file=str(split_file), **RAW).setup("fit")
