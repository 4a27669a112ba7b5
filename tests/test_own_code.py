"""Every method on a researcher's own code: their LightningModule, (x, y) data, torchvision's resnet18.

The only lightning_regs names used are the two wrappers (``IndexedDataset`` for the data, ``layered`` where a
model is split, here implicitly by ``setup_local_learning``) and the methods themselves.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import resnet18

from lightning_regs.callbacks import (
    AdversarialRobustnessMonitor,
    LabelSmoothing,
    LocalComplexityMonitor,
    ProgressiveSelfKD,
)
from lightning_regs.datamodules import IndexedDataset, class_ids
from lightning_regs.local_learning import LocalLearningMixin

QUIET = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "accelerator": "cpu",
}


def own_data(n: int = 32) -> TensorDataset:
    """What a researcher has: images and labels as tensors, samples as (x, y) pairs."""
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randn(n, 3, 16, 16, generator=generator), torch.randint(0, 10, (n,), generator=generator)
    )


class OwnClassifier(LightningModule):
    """A plain classifier as a researcher writes it, reading the dict batches IndexedDataset yields."""

    accepts_soft_targets = True  # accuracy below reads class_ids(batch), not batch["target"]

    def __init__(self) -> None:
        super().__init__()
        self.net = resnet18(num_classes=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["target"])  # ids, or (B, C) probabilities once a callback softens them
        self.log("train/acc", (logits.argmax(1) == class_ids(batch)).float().mean())
        return {"loss": loss, "logits": logits}

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", F.cross_entropy(self(batch["image"]), batch["target"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class OwnLocalClassifier(LocalLearningMixin, LightningModule):
    """The same researcher's classifier trained module by module: one set-up line, one step line."""

    def __init__(self, **local: object) -> None:
        super().__init__()
        self.net = resnet18(num_classes=10)
        self.setup_local_learning(self.net, **local)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss, logits, _ = self.local_training_step(x, y)
        return {"loss": loss, "logits": logits}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _weights(module: LightningModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.net.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: LightningModule) -> list[str]:
    return [k for k, v in module.net.state_dict().items() if k in before and not torch.equal(before[k], v)]


@pytest.mark.parametrize("method", ["pskd", "label_smoothing"])
def test_soft_target_methods_on_own_module_and_tuple_data(method: str) -> None:
    seed_everything(0)
    callback = ProgressiveSelfKD(alpha_T=0.8) if method == "pskd" else LabelSmoothing(0.1)
    module = OwnClassifier()
    loader = DataLoader(IndexedDataset(own_data()), batch_size=16)  # the one wrapper line
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no soft-target warning: the module declared it reads class_ids
        warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec|val_dataloader).*")
        Trainer(max_epochs=2, callbacks=[callback], **QUIET).fit(module, loader)
    if method == "pskd":
        assert bool(callback.table.seen.all()) and callback.table.num_samples == 32


@pytest.mark.parametrize("monitor", ["local_complexity", "robustness"])
def test_monitors_on_own_module_and_loaders_given_to_fit(monitor: str) -> None:
    seed_everything(0)
    if monitor == "local_complexity":
        callback = LocalComplexityMonitor(
            radius=0.5, num_directions=2, num_points=4, num_measurements=2, max_overhead=None, plot=False
        )
    else:
        callback = AdversarialRobustnessMonitor(epsilon=0.1, steps=2, num_points=4, every_n_epochs=1, plot=False)
    train = DataLoader(IndexedDataset(own_data()), batch_size=16)
    val = DataLoader(IndexedDataset(own_data(8)), batch_size=8)
    Trainer(max_epochs=2, callbacks=[callback], **QUIET).fit(OwnClassifier(), train, val)
    assert callback.history and all(len(v) == len(callback.measured_steps) > 0 for v in callback.history.values())
    assert all(torch.isfinite(torch.tensor(v)).all() for v in callback.history.values())


@pytest.mark.parametrize(
    ("local", "K"),
    [
        ({"head": "dgl", "K": 4}, 4),
        ({"head": "infopro", "K": 3}, 3),
        ({"head": "auglocal", "d": 2}, 9 - 2),  # stem + 8 residual blocks, every layer its own module
        ({"head": "dgl", "K": 3, "man": True, "man_momentum": 0.5}, 3),
        ({"head": "dgl", "split": ["layer2.1", "layer3.1"]}, 3),  # torchvision's block names
    ],
    ids=["dgl", "infopro", "auglocal", "man", "explicit-split"],
)
def test_local_learning_on_own_module_with_torchvision_resnet18(local: dict, K: int) -> None:
    seed_everything(0)
    module = OwnLocalClassifier(**local)
    before = _weights(module)
    Trainer(max_steps=2, **QUIET).fit(module, DataLoader(own_data(), batch_size=16))
    assert module.num_local_modules == K
    trained = [k for k in before if k.endswith("weight") and "bn" not in k and "downsample.1" not in k]
    assert set(trained) <= set(_changed(before, module))  # every conv and the classifier moved
    if local.get("man"):
        ema = [p for head in module.aux_heads.values() for p in head.ema.parameters()]
        assert ema and all(p.requires_grad is False for p in ema)
        # man=True alone moves them: each EMA started as a copy of the block it tracks, and has left that start.
        name_of = {id(p): name for name, p in module.net.named_parameters()}
        start = [before[name_of[id(p)]] for head in module.aux_heads.values() for p in head.tracked.parameters()]
        assert all(not torch.equal(a, b) for a, b in zip(start, ema, strict=True))


class CompiledOwnClassifier(OwnClassifier):
    """The same classifier with its network compiled, as users do for speed, by a backend that counts compilations."""

    def __init__(self, backend: object) -> None:
        super().__init__()
        self.net = torch.compile(self.net, backend=backend)


def _compilations(with_monitor: bool) -> int:
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    seed_everything(0)
    callbacks = [
        LocalComplexityMonitor(
            radius=0.5, num_directions=2, num_points=4, every_n_steps=1, max_overhead=None, plot=False
        )
    ]
    train = DataLoader(IndexedDataset(own_data()), batch_size=16)
    val = DataLoader(IndexedDataset(own_data(8)), batch_size=8)
    trainer = Trainer(max_epochs=1, callbacks=callbacks if with_monitor else [], **QUIET)
    trainer.fit(CompiledOwnClassifier(counter), train, val)
    if with_monitor:
        assert len(callbacks[0].measured_steps) == 3 and callbacks[0].history["lc/train"]
    return counter.frame_count


def test_a_compiled_model_is_measured_eagerly_without_recompiling() -> None:
    # The monitor's forwards (other batch shapes, hooks) would each recompile the graph; measured eagerly they don't.
    assert _compilations(with_monitor=True) == _compilations(with_monitor=False) > 0
