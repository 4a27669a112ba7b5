"""A damaged image file in CUB or RadImageNet is an error naming the file, not a bare decoder error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from lightning_regs.datamodules.cub import CUB200DataModule
from lightning_regs.datamodules.files import UnreadableImageError
from lightning_regs.datamodules.radimagenet import RadImageNetDataModule
from tests.helpers.fake_datasets_medical import make_radimagenet
from tests.helpers.fake_datasets_vision import write_cub

DAMAGES = {
    "truncated to half": lambda data: data[: len(data) // 2],
    "truncated to 20 bytes": lambda data: data[:20],
    "empty": lambda data: b"",
    "text, not an image": lambda data: b"this is not an image\n" * 8,
    "zeroed after the header": lambda data: data[:64] + bytes(len(data) - 64),
}


def _damage(path: Path, how: str) -> None:
    path.write_bytes(DAMAGES[how](path.read_bytes()))


def _read_all(dataset) -> None:
    for index in range(len(dataset)):
        dataset[index]


@pytest.mark.fault(area="data", outcome="refused")
@pytest.mark.parametrize("how", list(DAMAGES))
def test_a_damaged_cub_image_is_named(tmp_path, how):
    cub = write_cub(tmp_path)
    raw = {"num_workers": 0, "eval_transform": v2.ToDtype(torch.float32, scale=True)}
    dm = CUB200DataModule(root=str(tmp_path), batch_size=3, train_transform=raw["eval_transform"], **raw)
    dm.setup("fit")
    damaged = Path(cub["folder"]) / "images" / cub["paths"][0]
    _damage(damaged, how)
    with pytest.raises(UnreadableImageError, match=rf"{damaged.name}.*(cannot be decoded|decompression).*Replace it"):
        for split in ("train", "test"):
            _read_all(dm.datasets[split])


@pytest.mark.fault(area="data", outcome="refused")
@pytest.mark.parametrize("how", list(DAMAGES))
def test_a_damaged_radimagenet_image_is_named(tmp_path, how):
    clean = make_radimagenet(tmp_path / "rin")
    raw = {"image_size": None, "augment": False, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "batch_size": 4}
    dm = RadImageNetDataModule(clean["root"], **raw)
    dm.setup("fit")
    path, _ = dm.datasets["train"].items[0]
    _damage(Path(path), how)
    with pytest.raises(UnreadableImageError, match=rf"{Path(path).name}.*cannot be decoded.*Replace it"):
        _read_all(dm.datasets["train"])
