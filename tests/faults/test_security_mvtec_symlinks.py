"""MVTec AD reads only files inside its root: a symlink out of it, at any level, is a named error (issue 22).

Before the fix ``MVTecADDataModule`` followed every symlink in the tree (category, split, defect and
mask folders, image and mask files) and read what it pointed at, while CUB and RadImageNet refuse
paths that resolve outside the root (``datamodules.files.RootGuard``). A damaged image failed at load
time without the file's name; it is now an ``UnreadableImageError`` naming the file and the fix.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from lightning_regs.datamodules.files import OutsideRootError, UnreadableImageError
from lightning_regs.datamodules.mvtec import MVTecADDataModule
from tests.helpers.fake_datasets_medical import MVTEC_SIZE, make_mvtec, mvtec_fill

RAW = {"image_size": None, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}

# Every level of the tree that a scan follows (relative to <root>/bottle; "" is the category folder itself).
LEVELS = (
    "",
    "train",
    "train/good",
    "train/good/000.png",
    "test",
    "test/good",
    "test/good/001.png",
    "test/broken_large",
    "test/broken_large/001.png",
    "ground_truth",
    "ground_truth/broken_large",
    "ground_truth/broken_large/000_mask.png",
)


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    """A fake MVTec AD root and, beside it (outside it), a full copy of its category to point links at."""
    root = make_mvtec(tmp_path / "mvtec")
    outside = tmp_path / "elsewhere"
    shutil.copytree(root / "bottle", outside / "bottle")
    return root, outside


def _replace_by_link(path: Path, target: Path, relative: bool) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    path.symlink_to(os.path.relpath(target, path.parent) if relative else target)


def _refused(root: Path, offending: Path):
    pattern = rf"{re.escape(str(offending))} leads outside the data root {re.escape(str(root))}.*copy the files in"
    return pytest.raises(ValueError, match=pattern)


@pytest.mark.fault(area="security", outcome="refused")
@pytest.mark.parametrize("relative", [False, True], ids=["absolute-link", "relative-link"])
@pytest.mark.parametrize("level", LEVELS, ids=[level or "category" for level in LEVELS])
def test_a_symlink_out_of_the_root_is_refused_at_every_level(tmp_path, level, relative):
    root, outside = _tree(tmp_path)
    link = root / "bottle" / level
    _replace_by_link(link, outside / "bottle" / level, relative)
    dm = MVTecADDataModule(root, "bottle", batch_size=2, **RAW)
    with _refused(root, link) as caught:
        dm.setup("fit")
    assert isinstance(caught.value, OutsideRootError)
    assert not dm.datasets  # nothing was set up from the scan


@pytest.mark.fault(area="security", outcome="refused")
@pytest.mark.parametrize("where", ["train/good/009.png", "test/good/009.png", "ground_truth/contamination/009.png"])
def test_a_link_to_a_system_file_is_refused_not_read(tmp_path, where):
    root = make_mvtec(tmp_path / "mvtec")
    link = root / "bottle" / where
    link.symlink_to("/etc/passwd")
    with _refused(root, link):
        MVTecADDataModule(root, "bottle", **RAW).setup("fit")


@pytest.mark.fault(area="security", outcome="refused")
def test_a_dangling_link_that_leads_outside_is_refused_not_skipped(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    link = root / "bottle" / "train" / "good" / "777.png"
    link.symlink_to(tmp_path / "not-yet-there.png")
    with _refused(root, link):
        MVTecADDataModule(root, "bottle", **RAW).setup("fit")


@pytest.mark.fault(area="security", outcome="handled")
def test_a_root_that_is_itself_a_link_is_followed(tmp_path):
    real = make_mvtec(tmp_path / "disk" / "mvtec")
    root = tmp_path / "data"
    root.symlink_to(real)
    dm = MVTecADDataModule(root, "bottle", batch_size=8, **RAW)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 3 and len(dm.datasets["test"]) == 6


@pytest.mark.fault(area="security", outcome="handled")
def test_links_that_stay_inside_the_root_are_followed(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    shutil.move(root / "bottle", root / "store")
    (root / "bottle").symlink_to("store")  # the category folder: a link to a folder inside the root
    image = root / "store" / "train" / "good" / "002.png"
    _replace_by_link(image, root / "store" / "train" / "good" / "000.png", relative=True)
    dm = MVTecADDataModule(root, "bottle", batch_size=8, **RAW)
    dm.setup("fit")
    fills = sorted(round(float(dm.datasets["train"][i]["image"][0, 0, 0]) * 255) for i in range(3))
    assert fills == sorted([mvtec_fill("train", 0, 0), mvtec_fill("train", 0, 0), mvtec_fill("train", 0, 1)])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damage_idat(path: Path) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(b"IDAT") + 8
    data[at] ^= 0xFF  # the chunk's CRC no longer matches
    path.write_bytes(bytes(data))


DAMAGES = {
    "truncated-train-image": ("train/good/001.png", _truncate, "train", 1),
    "truncated-test-image": ("test/broken_large/000.png", _truncate, "test", 0),
    "truncated-mask": ("ground_truth/contamination/001_mask.png", _truncate, "test", 3),
    "bad-idat-crc": ("train/good/000.png", _damage_idat, "train", 0),
    "not-an-image": ("test/good/000.png", lambda p: p.write_text("<html>not found</html>"), "test", 4),
    "empty-file": ("train/good/002.png", lambda p: p.write_bytes(b""), "train", 2),
}


@pytest.mark.fault(area="security", outcome="refused")
@pytest.mark.parametrize("damage", DAMAGES)
def test_an_image_that_does_not_decode_is_named_with_its_path(tmp_path, damage):
    where, spoil, split, position = DAMAGES[damage]
    root = make_mvtec(tmp_path / "mvtec")
    path = root / "bottle" / where
    spoil(path)
    dm = MVTecADDataModule(root, "bottle", batch_size=8, **RAW)
    dm.setup("fit")
    with pytest.raises(OSError, match=rf"{re.escape(str(path))} cannot be decoded as an image.*Replace it") as caught:
        for index in range(len(dm.datasets[split])):
            dm.datasets[split][index]
    assert isinstance(caught.value, UnreadableImageError)
    assert dm.datasets[split].items[position][0 if "mask" not in damage else 1] == path


@pytest.mark.fault(area="security", outcome="handled")
def test_intact_images_still_decode_to_their_pixels(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    dm = MVTecADDataModule(root, "bottle", batch_size=8, **RAW)
    dm.setup("fit")
    sample = dm.datasets["train"][0]
    assert sample["image"].shape == (3, *MVTEC_SIZE) and torch.all(sample["mask"] == 0)
    assert round(float(sample["image"][0, 0, 0]) * 255) == mvtec_fill("train", 0, 0)
