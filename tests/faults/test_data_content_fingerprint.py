"""Resume on changed content is a named error (issue 22, kind 2): the fingerprint digests what samples are read from."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from lightning_regs.datamodules import CUB200DataModule, DatasetDataModule, RadImageNetDataModule
from lightning_regs.datamodules.base import DataChangedError
from tests.helpers.fake_datasets_medical import make_radimagenet, write_grey_png, write_radimagenet_csv
from tests.helpers.fake_datasets_vision import write_cub

REFUSED = pytest.mark.fault(area="data", outcome="refused")
HANDLED = pytest.mark.fault(area="data", outcome="handled")


def _refuses(make, change, how: str) -> None:
    original = make()
    original.setup("fit")
    state = original.state_dict()
    change()
    resumed = make()
    resumed.setup("fit")
    with pytest.raises(
        DataChangedError, match=rf"not the data the checkpoint was made on \(the train split changed: .*{how}"
    ):
        resumed.load_state_dict(state)


# CUB: JPEG files ------------------------------------------------------------------------------------------------


def _cub(tmp_path: Path):
    manifest = write_cub(tmp_path, num_classes=2, per_class=4, textured=True)
    images = manifest["folder"] / "images"
    train = [images / p for p, t in zip(manifest["paths"], manifest["is_train"], strict=True) if t]
    return (lambda: CUB200DataModule(root=tmp_path, batch_size=2, num_workers=0, image_size=8)), train


def _swap(a: Path, b: Path) -> None:
    data = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data)


def _repaint(path: Path, colour: int) -> None:
    with Image.open(path) as image:
        size, mode = image.size, image.mode
    Image.new(mode, size, (colour, 255 - colour, colour // 2)).save(path, format="JPEG")


@REFUSED
@pytest.mark.parametrize("change", ["replaced pixels", "two same-class images swapped", "re-encoded"])
def test_cub_content_changed_under_a_checkpoint(tmp_path, change) -> None:
    make, train = _cub(tmp_path)
    actions = {
        "replaced pixels": lambda: _repaint(train[0], 3),
        "two same-class images swapped": lambda: _swap(train[0], train[1]),  # classes are in consecutive folders
        "re-encoded": lambda: Image.open(train[0]).save(train[0], format="JPEG", quality=20),
    }
    _refuses(make, actions[change], "the content differs")


@HANDLED
def test_cub_unchanged_and_moved_data_resumes(tmp_path) -> None:
    make, _ = _cub(tmp_path / "a")
    original = make()
    original.setup("fit")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = CUB200DataModule(root=tmp_path / "b", batch_size=2, num_workers=0, image_size=8)
    moved.setup("fit")
    moved.load_state_dict(original.state_dict())  # another root, the same bytes


# RadImageNet: CSV rows and PNG files ----------------------------------------------------------------------------


def _radimagenet(tmp_path: Path):
    manifest = make_radimagenet(tmp_path, per_split=(3, 1, 1))
    make = lambda: RadImageNetDataModule(tmp_path, image_size=8, batch_size=2, check_images="exists")  # noqa: E731
    return make, manifest


def _rewrite(tmp_path: Path, manifest: dict, rows: list) -> None:
    write_radimagenet_csv(tmp_path, "train", rows)


@REFUSED
@pytest.mark.parametrize(
    ("change", "how"),
    [("replaced pixels", "the content differs"), ("two same-class images swapped", "the content differs"),
     ("a relabelled row", "the labels differ"), ("a removed row", "the size changed from 12 to 11"),
     ("an added row", "the size changed from 12 to 13"), ("two rows swapped", "the labels differ")],
)  # fmt: skip
def test_radimagenet_content_changed_under_a_checkpoint(tmp_path, change, how) -> None:
    make, manifest = _radimagenet(tmp_path)
    rows = list(manifest["rows"]["train"])
    first, second = tmp_path / rows[0][0], tmp_path / rows[1][0]
    other = next(label for _, label in rows if label != rows[0][1])
    extra = str(Path(rows[0][0]).with_name("extra.png"))
    actions = {
        "replaced pixels": lambda: write_grey_png(first, seed=99),
        "two same-class images swapped": lambda: _swap(first, second),
        "a relabelled row": lambda: _rewrite(tmp_path, manifest, [(rows[0][0], other), *rows[1:]]),
        "a removed row": lambda: _rewrite(tmp_path, manifest, rows[1:]),
        "an added row": lambda: (
            write_grey_png(tmp_path / extra, seed=5),
            _rewrite(tmp_path, manifest, [*rows, (extra, rows[0][1])]),
        ),
        "two rows swapped": lambda: _rewrite(tmp_path, manifest, [rows[0], rows[3], *rows[1:3], *rows[4:]]),
    }
    _refuses(make, actions[change], how)


@HANDLED
def test_radimagenet_unchanged_data_resumes(tmp_path) -> None:
    make, _ = _radimagenet(tmp_path)
    original = make()
    original.setup("fit")
    resumed = make()
    resumed.setup("fit")
    resumed.load_state_dict(original.state_dict())


# A user's own data sets ------------------------------------------------------------------------------------------


class NoTargets(Dataset):
    """A user's data set with no ``targets``: only its items tell what it holds."""

    def __init__(self, images: torch.Tensor, labels: list[int]) -> None:
        self.rows = [(images[i], labels[i]) for i in range(len(labels))]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        return self.rows[index]


class Augmented(NoTargets):
    def __getitem__(self, index: int):
        image, label = self.rows[index]
        return image + 0.01 * torch.randn_like(image), label  # a random augmentation, from the global RNG


def _images(n: int = 12) -> torch.Tensor:
    return torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(0))


LABELS = [i % 3 for i in range(12)]


def _changed(kind: str) -> tuple[torch.Tensor, list[int]]:
    images, labels = _images(), list(LABELS)
    if kind == "replaced pixels":
        images[2, 0, 1, 1] += 1
    elif kind == "two same-class images swapped":
        images[[0, 3]] = images[[3, 0]]
    elif kind == "a relabelled sample":
        labels[5] = 0
    elif kind == "shuffled":
        order = torch.randperm(12, generator=torch.Generator().manual_seed(1))
        images, labels = images[order], [labels[i] for i in order.tolist()]
    elif kind == "a removed sample":
        images, labels = images[:-1], labels[:-1]
    return images, labels


KINDS = {
    "replaced pixels": "the content differs",
    "two same-class images swapped": "the content differs",
    "a relabelled sample": "the (labels|content) differ",
    "shuffled": "the (labels|content) differ",
    "a removed sample": "the size changed from 12 to 11",
}
SETS = {
    "TensorDataset": lambda images, labels: TensorDataset(images, torch.tensor(labels)),
    "no targets": NoTargets,
    "no targets, augmented": Augmented,
}


@REFUSED
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("data_set", list(SETS))
def test_own_data_changed_under_a_checkpoint(data_set, kind) -> None:
    build = SETS[data_set]
    current = {"data": build(_images(), LABELS)}

    def change() -> None:
        current["data"] = build(*_changed(kind))

    _refuses(lambda: DatasetDataModule(current["data"], batch_size=4), change, KINDS[kind])


@HANDLED
@pytest.mark.parametrize("data_set", list(SETS))
def test_own_data_rebuilt_the_same_resumes_and_keeps_the_global_rng(data_set) -> None:
    original = DatasetDataModule(SETS[data_set](_images(), LABELS), batch_size=4)
    original.setup("fit")
    torch.manual_seed(7)
    expected = torch.rand(1)
    torch.manual_seed(7)
    resumed = DatasetDataModule(SETS[data_set](_images(), LABELS), batch_size=4)
    resumed.setup("fit")
    resumed.load_state_dict(original.state_dict())
    assert torch.equal(torch.rand(1), expected)  # the fingerprint's seeded reading gave the RNG back


def _folder(root: Path) -> None:
    for c, name in enumerate(["cat", "dog"]):
        for i in range(3):
            write_grey_png(root / name / f"{i}.png", seed=10 * c + i)


@REFUSED
@pytest.mark.parametrize(
    ("change", "how"),
    [("replaced pixels", "the content differs"), ("two same-class images swapped", "the content differs"),
     ("an added file", "the size changed from 6 to 7"), ("a removed file", "the size changed from 6 to 5")],
)  # fmt: skip
def test_an_image_folder_changed_under_a_checkpoint(tmp_path, change, how) -> None:
    _folder(tmp_path)
    actions = {
        "replaced pixels": lambda: write_grey_png(tmp_path / "cat" / "1.png", seed=77),
        "two same-class images swapped": lambda: _swap(tmp_path / "dog" / "0.png", tmp_path / "dog" / "2.png"),
        "an added file": lambda: write_grey_png(tmp_path / "dog" / "3.png", seed=5),
        "a removed file": lambda: (tmp_path / "cat" / "2.png").unlink(),
    }
    transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    _refuses(lambda: DatasetDataModule(ImageFolder(tmp_path, transform=transform), batch_size=2), actions[change], how)
