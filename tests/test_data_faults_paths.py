"""Fault injection: a path read from a file list (or found by a folder walk) must stay inside the data root.

Each case points an entry outside the root three ways: climbing with ``..``, an absolute path, and a
symlink inside the root that leads out. Before the fix every one was followed: the file outside was
read, decoded and hashed (RadImageNet) or listed as a training image (CUB).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from lightning_regs.datamodules.cub import CUB200DataModule
from lightning_regs.datamodules.radimagenet import RadImageNetDataModule
from tests.helpers.fake_datasets_medical import make_radimagenet, write_grey_png, write_radimagenet_csv
from tests.helpers.fake_datasets_vision import write_cub

ESCAPES = ("climb", "absolute", "symlink")


def _escaping_entry(how: str, root: Path, secret: Path, link_at: Path) -> str:
    """An entry, relative to ``root``, that leads to ``secret`` outside it."""
    if how == "climb":
        return os.path.relpath(secret, root)
    if how == "absolute":
        return str(secret)
    link_at.parent.mkdir(parents=True, exist_ok=True)
    link_at.symlink_to(secret)
    return link_at.relative_to(root).as_posix()


@pytest.mark.parametrize("how", ESCAPES)
def test_radimagenet_csv_entries_leading_out_of_the_root_are_named(tmp_path, how):
    manifest = make_radimagenet(tmp_path / "data")
    root = manifest["root"]
    secret = write_grey_png(tmp_path / "outside" / "secret.png")
    entry = _escaping_entry(how, root, secret, root / "radiology_ai/CT/abd/normal/link.png")
    rows = [*manifest["rows"]["train"], (entry, "CT/abd/normal")]
    write_radimagenet_csv(root, "train", rows)
    line = len(rows) + 1  # after the header
    pattern = rf"RadiologyAI_train\.csv, line {line}: the entry {re.escape(repr(entry))} leads outside the data root"
    with pytest.raises(ValueError, match=pattern):
        RadImageNetDataModule(root, image_size=8).setup("fit")


@pytest.mark.parametrize("target", ["file", "folder"])
def test_radimagenet_folder_mode_refuses_symlinks_out_of_the_root(tmp_path, target):
    root = make_radimagenet(tmp_path / "data")["root"]
    secret = write_grey_png(tmp_path / "outside" / "secret.png")
    if target == "file":
        (root / "radiology_ai/CT/abd/normal/link.png").symlink_to(secret)
        entry = "radiology_ai/CT/abd/normal/link.png"
    else:
        (root / "radiology_ai/CT/abd/stolen").symlink_to(secret.parent, target_is_directory=True)
        entry = "radiology_ai/CT/abd/stolen/secret.png"
    with pytest.raises(ValueError, match=rf"folder walk of .*: the entry '{re.escape(entry)}' leads outside"):
        RadImageNetDataModule(root, mode="folder", image_size=8).setup("fit")


@pytest.mark.parametrize("how", ESCAPES)
def test_cub_images_txt_entries_leading_out_of_the_images_folder_are_named(tmp_path, how):
    cub = write_cub(tmp_path / "data")
    images = cub["folder"] / "images"
    secret = tmp_path / "outside" / "secret.jpg"
    secret.parent.mkdir()
    secret.write_bytes((images / cub["paths"][2]).read_bytes())
    entry = _escaping_entry(how, images, secret, images / "001.Bird_1" / "link.jpg")
    listing = cub["folder"] / "images.txt"
    lines = listing.read_text().splitlines()
    lines[2] = f"3 {entry}"
    listing.write_text("\n".join(lines) + "\n")
    pattern = rf"images\.txt, line 3: the entry {re.escape(repr(entry))} leads outside the data root"
    with pytest.raises(ValueError, match=pattern):
        CUB200DataModule(root=str(tmp_path / "data"), num_workers=0).setup("fit")


def test_symlinks_that_stay_inside_and_a_symlinked_root_are_allowed(tmp_path):
    manifest = make_radimagenet(tmp_path / "real")
    real = manifest["root"]
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)  # the data root itself may be a link
    original = manifest["rows"]["train"][0][0]
    (real / "radiology_ai/CT/abd/normal/alias.png").symlink_to(real / original)
    rows = [*manifest["rows"]["train"], ("radiology_ai/CT/abd/normal/alias.png", "CT/abd/normal")]
    write_radimagenet_csv(real, "train", rows)
    dm = RadImageNetDataModule(tmp_path / "alias", image_size=8, bad_images="warn")
    with pytest.warns(UserWarning, match="duplicates: 1"):  # same bytes as the original: reported, kept
        dm.setup("fit")
    assert len(dm.datasets["train"]) == len(rows)


def test_inside_root_returns_the_resolved_path_and_names_the_source(tmp_path):
    from lightning_regs.datamodules.files import inside_root

    (tmp_path / "root" / "sub").mkdir(parents=True)
    assert (
        inside_root("sub/../sub/x.png", tmp_path / "root", "list.txt, line 1")
        == (tmp_path / "root" / "sub" / "x.png").resolve()
    )
    with pytest.raises(ValueError, match=r"list\.txt, line 2: the entry 'sub/../../x' leads outside the data root"):
        inside_root("sub/../../x", tmp_path / "root", "list.txt, line 2")
