"""Local learning on a researcher's own model and data: K from the split, the input shape from the data, MAN after
parameter-free blocks, compiled backbones, and the one-call mixin set-up."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_regs.datamodules import DigitsDataModule, IndexedDataset
from lightning_regs.local_learning import LocalLearningMixin
from lightning_regs.local_learning.builder import LocalLearningSpec
from lightning_regs.models import MLP, LayeredModel, SmallCNN
from lightning_regs.tasks import LocalLearningClassifier
from tests.helpers.trainers import QUIET


def _digits_loader(n: int = 64, batch_size: int = 16) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator))
    return DataLoader(IndexedDataset(data), batch_size=batch_size)


def test_k_is_inferred_from_explicit_split_points() -> None:
    model = MLP(in_features=64, num_classes=10, width=16, depth=5)
    task = LocalLearningClassifier(model, 10, split=[0, 2], input_shape=(1, 8, 8))
    assert task.num_local_modules == 3
    assert task.split_points == (0, 2)
    with pytest.raises(ValueError, match="K=4 but 2 split points give 3 modules"):
        LocalLearningClassifier(model, 10, K=4, split=[0, 2], input_shape=(1, 8, 8))


def test_a_wrong_input_shape_names_the_argument() -> None:
    with pytest.raises(ValueError, match="Set input_shape to the shape of one input sample"):
        LocalLearningClassifier(SmallCNN(num_classes=10, in_channels=1), 10, K=2, input_shape=(3, 32, 32))


@pytest.mark.parametrize("source", ["datamodule", "loaders"])
def test_input_shape_comes_from_the_data_and_is_saved(source: str, tmp_path) -> None:
    seed_everything(0)
    task = LocalLearningClassifier(SmallCNN(num_classes=10, in_channels=1, width=8), 10, K=2, lr=0.05)
    assert not hasattr(task, "aux_heads")  # no shape yet: the heads wait for the data
    assert task.num_local_modules == 2
    trainer = Trainer(max_steps=2, default_root_dir=tmp_path, **{**QUIET, "enable_checkpointing": True})
    if source == "datamodule":
        trainer.fit(task, DigitsDataModule(batch_size=16))
    else:
        trainer.fit(task, train_dataloaders=_digits_loader())
    assert task.local_input_shape == (1, 8, 8)
    assert task.hparams.input_shape == [1, 8, 8]
    path = trainer.checkpoint_callback.best_model_path
    restored = LocalLearningClassifier.load_from_checkpoint(
        path, backbone=SmallCNN(num_classes=10, in_channels=1, width=8)
    )
    assert sorted(restored.aux_heads) == sorted(task.aux_heads)
    for key, value in task.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[key], value, rtol=0, atol=0)


def test_no_readable_sample_asks_for_input_shape() -> None:
    task = LocalLearningClassifier(SmallCNN(num_classes=10, in_channels=1, width=8), 10, K=2)
    loader = DataLoader([[0.5, 1]] * 4, batch_size=2)  # samples without an image tensor
    with pytest.raises(ValueError, match=r"Pass input_shape=\(C, H, W\)"):
        Trainer(max_steps=1, **QUIET).fit(task, train_dataloaders=loader)


def test_man_trains_when_the_block_after_a_cut_has_no_parameters() -> None:
    seed_everything(0)
    layers = [("fc1", nn.Flatten()), ("lin", nn.Linear(64, 16)), ("act", nn.ReLU()), ("fc2", nn.Linear(16, 16))]
    net = LayeredModel(layers, nn.Linear(16, 10), 10)
    task = LocalLearningClassifier(net, 10, split=["lin"], man=True, input_shape=(1, 8, 8), lr=0.05)
    assert list(task.aux_heads["0"].ema.parameters()) == []
    before = [p.detach().clone() for p in net.parameters()]
    Trainer(max_steps=3, **QUIET).fit(task, _digits_loader())
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_spec_checks_happen_at_construction() -> None:
    model = MLP(in_features=64, num_classes=10, width=16, depth=5)
    with pytest.raises(ValueError, match="Unknown head"):
        LocalLearningSpec.check(model, head="dgll")
    with pytest.raises(ValueError, match="applies to InfoPro heads"):
        LocalLearningSpec.check(model, head="dgl", task_loss="contrast")
    assert len(model.layers) - 2 == LocalLearningSpec.check(model, head="auglocal", d=2).K
    assert LocalLearningSpec.check(model).K == 4


class OwnSequentialModule(LocalLearningMixin, LightningModule):
    """A researcher's module: a plain nn.Sequential, (x, y) batches, one line of local-learning set-up."""

    def __init__(self, compile_backbone: bool = False) -> None:
        super().__init__()
        net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
        )  # fmt: skip
        self.net = torch.compile(net, backend="eager") if compile_backbone else net
        self.setup_local_learning(self.net, K=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss, logits, _ = self.local_training_step(x, y)
        return {"loss": loss, "logits": logits}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


@pytest.mark.parametrize("compile_backbone", [False, True])
def test_one_call_sets_up_local_learning_on_an_own_sequential(compile_backbone: bool) -> None:
    seed_everything(0)
    module = OwnSequentialModule(compile_backbone)
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(32, 1, 8, 8, generator=generator), torch.randint(0, 10, (32,), generator=generator)
    )
    before = {k: v.clone() for k, v in module.state_dict().items()}
    Trainer(max_steps=2, **QUIET).fit(module, DataLoader(data, batch_size=8))
    # Cuts fall between conv blocks only: never between a conv and its BatchNorm or activation.
    assert module.num_local_modules == 3 and len(module.split_points) == 2
    keys = [k for k in module.state_dict() if not k.startswith("aux_heads.")]
    assert keys == list(before)  # the backbone keeps its own state-dict keys
    assert any(not torch.equal(module.state_dict()[k], before[k]) for k in keys if k.endswith("weight"))
