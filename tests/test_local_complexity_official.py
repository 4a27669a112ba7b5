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


@pytest.mark.parametrize("preset", ["official_mlp", "default"])
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
