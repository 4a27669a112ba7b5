"""Oracle: LocalComplexityMonitor(preset="official_mlp") counts what the official MLP script counts.

The official MLP script hooks the output of every nn.Linear (the logits included) and counts, around each point,
the neurons whose sign is not the same at all 2P vertices x ± r·v_p (the centre is not a vertex). Re-derived here
with an explicit float64 forward, then compared with the monitor in a real fit (measured at step 0).
"""

from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_regs.callbacks import LocalComplexityMonitor
from lightning_regs.datamodules import IndexedDataset


def official_mlp_lc(mlp: nn.Sequential, points: torch.Tensor, radius: float, directions: torch.Tensor) -> float:
    total = 0.0
    for x in points.double():
        vertices = torch.cat([x + radius * directions.double(), x - radius * directions.double()])
        h = vertices
        for module in mlp:
            h = module.double()(h)
            if isinstance(module, nn.Linear):
                positive = h > 0
                total += float((positive.any(dim=0) & ~positive.all(dim=0)).sum())
    return total / len(points)


class MLPTask(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch["image"]), batch["target"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("preset", ["official_mlp", "library"])
def test_the_monitor_counts_what_the_official_mlp_script_counts(preset: str) -> None:
    seed_everything(0)
    task = MLPTask()
    initial = copy.deepcopy(task.net)
    data = IndexedDataset(TensorDataset(torch.randn(64, 16), torch.arange(64) % 10))
    monitor = LocalComplexityMonitor(
        radius=0.5, num_directions=8, num_points=12, sets=["train"], num_measurements=2, max_overhead=None,
        plot=False, preset=preset,
    )  # fmt: skip
    Trainer(max_steps=1, callbacks=[monitor], logger=False, enable_progress_bar=False, enable_checkpointing=False).fit(
        task, DataLoader(data, batch_size=16)
    )
    official = official_mlp_lc(initial, monitor.points["train"], 0.5, monitor.points["directions"])
    measured = monitor.history["lc/train"][0]  # step 0: the initial weights
    if preset == "official_mlp":
        assert measured == pytest.approx(official, abs=1e-9)
    else:  # ReLU inputs only (no logits) and the centre among the vertices: a different, smaller count
        assert measured < official


@pytest.mark.parametrize("preset", ["default", "paper", None])
def test_a_preset_outside_the_vocabulary_is_refused(preset) -> None:
    with pytest.raises(ValueError, match=rf"preset must be 'library', 'official' or 'official_mlp', got {preset!r}"):
        LocalComplexityMonitor(preset=preset)
    assert LocalComplexityMonitor().preset == "library"


def official_resnet_lc(net: nn.Sequential, points: torch.Tensor, radius: float, directions: torch.Tensor) -> float:
    """The official ResNet script's count: the tensors fed to each ReLU, the 2P vertices only (no centroid)."""
    total = 0.0
    for x in points.double():
        h = torch.cat([x + radius * directions.double(), x - radius * directions.double()])
        for module in net:
            if isinstance(module, nn.ReLU):
                signs = h.flatten(1) > 0
                total += float((signs != signs[:1]).any(dim=0).sum())  # each vertex against vertex 0
            h = module.double()(h)
    return total / len(points)


class ConvTask(MLPTask):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
            nn.Linear(64, 10),
        )  # fmt: skip


def test_the_official_preset_counts_what_the_official_resnet_script_counts() -> None:
    seed_everything(0)
    task = ConvTask()
    initial = copy.deepcopy(task.net)
    data = IndexedDataset(TensorDataset(torch.randn(64, 1, 4, 4), torch.arange(64) % 10))
    measured = {}
    for preset in ("official", "library"):
        seed_everything(0)
        monitor = LocalComplexityMonitor(
            radius=0.8, num_directions=6, num_points=16, sets=["train"], num_measurements=2, max_overhead=None,
            plot=False, preset=preset,
        )  # fmt: skip
        trainer = Trainer(max_steps=1, callbacks=[monitor], logger=False, enable_progress_bar=False,
                          enable_checkpointing=False)  # fmt: skip
        trainer.fit(copy.deepcopy(task), DataLoader(data, batch_size=16))
        measured[preset] = monitor.history["lc/train"][0]  # step 0: the initial weights
    official = official_resnet_lc(initial, monitor.points["train"], 0.8, monitor.points["directions"])
    assert measured["official"] == pytest.approx(official, abs=1e-9)
    # The centre can only add a neuron (one whose sign at x differs from all 2P vertices): never below the official.
    assert measured["library"] >= official
