"""CUB's GCD mode with two views feeds GCDClassifier; the CUB example config parses."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torchvision.transforms import v2

from lightning_regs.cli import LightningRegsCLI
from lightning_regs.datamodules.cub import CUB200DataModule
from lightning_regs.models import SmallCNN
from lightning_regs.tasks import GCDClassifier
from tests.helpers.fake_datasets_vision import write_cub
from tests.helpers.trainers import QUIET

ROOT = Path(__file__).resolve().parents[1]
RAW = {"num_workers": 0, "eval_transform": v2.Compose([v2.Resize((8, 8)), v2.ToDtype(torch.float32, scale=True)])}


class _Noisy(torch.nn.Module):
    """Resize, scale and add noise: a random augmentation that shows on the fake, uniformly coloured images."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return RAW["eval_transform"](image) + 0.1 * torch.randn(3, 8, 8)


@pytest.fixture
def cub(tmp_path):
    return write_cub(tmp_path, num_classes=4, per_class=4)


def test_gcd_mode_yields_two_different_views_and_trains_gcd_classifier(tmp_path, cub):
    dm = CUB200DataModule(root=str(tmp_path), gcd=True, gcd_views=2, batch_size=4, train_transform=_Noisy(), **RAW)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 2, 3, 8, 8)
    assert not torch.equal(batch["image"][:, 0], batch["image"][:, 1])  # two draws of the augmentation
    task = GCDClassifier(
        SmallCNN(num_classes=8, in_channels=3, width=4), 8, num_known=2, num_novel=2, proj_hidden=8, proj_dim=4
    )
    trainer = Trainer(max_epochs=1, accelerator="cpu", devices=1, **QUIET)
    trainer.fit(task, datamodule=dm)
    assert {"gcd/all", "gcd/old", "gcd/new"} <= set(trainer.callback_metrics)


def test_two_views_need_gcd_mode(tmp_path):
    with pytest.raises(ValueError, match="gcd_views"):
        CUB200DataModule(root=str(tmp_path), gcd_views=2)


def test_cub_example_config_parses(tmp_path, cub, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-regs"])
    config = ROOT / "examples" / "gcd_cub.yaml"
    cli = LightningRegsCLI(args=["--config", str(config), "--data.init_args.root", str(tmp_path)], run=False)
    assert isinstance(cli.model, GCDClassifier) and cli.model.num_classes == 200
    assert cli.model.hparams.ler_threshold == 0.7 and cli.model.hparams.ler_weight == 2.0
    assert cli.datamodule.hparams.gcd and cli.datamodule.hparams.gcd_views == 2
    assert cli.datamodule.hparams.gcd_split_file == "ssb"  # the papers' split, shipped


def test_vit_backbone_loads_a_local_state_dict_and_trains_only_the_last_block(tmp_path):
    from lightning_regs.models.vit_features import ViTFeatures

    arch = {"image_size": 8, "patch_size": 4, "num_layers": 2, "num_heads": 2, "hidden_dim": 8, "mlp_dim": 16}
    torch.manual_seed(0)
    source = ViTFeatures(trainable_blocks=None, **arch)
    path = tmp_path / "vit.pt"
    torch.save(source.vit.state_dict(), path)
    torch.manual_seed(1)
    loaded = ViTFeatures(state_dict=str(path), **arch)
    image = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(loaded(image), source(image))
    trainable = {name for name, p in loaded.named_parameters() if p.requires_grad}
    assert trainable and all(".encoder_layer_1." in name for name in trainable)
