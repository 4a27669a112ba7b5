"""Both representation monitors under FSDP2 (ModelParallelStrategy + fully_shard, 2 gloo processes) equal one process.

The classifier's weights are DTensors there: NeuralCollapseMonitor gathers them with ``full_tensor()`` (NC3, NC4).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.tensor import DTensor

from lightning_regs.callbacks import DiffusionSpectralEntropyMonitor, NeuralCollapseMonitor
from lightning_regs.models import MLP
from lightning_regs.tasks import ImageClassifier
from tests.helpers.ddp import run_in_ddp
from tests.helpers.trainers import QUIET, SequentialDigits

PER_RANK = 8


class HeadIsSharded(Callback):
    """Records whether the classifier's weight was a DTensor when the monitors ran."""

    def __init__(self) -> None:
        self.sharded: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.sharded.append(isinstance(pl_module.backbone.head.weight, DTensor))


def fit(root: Path, batch: int, **trainer_kwargs: Any) -> dict[str, Any]:
    seed_everything(0)
    task = ImageClassifier(MLP(in_features=64, num_classes=10, width=32, depth=3), 10, lr=0.1, scheduler="constant")
    shared = {"every_n_steps": 2, "num_points": 23, "batch_size": 5, "max_overhead": None, "plot": False}
    nc = NeuralCollapseMonitor(**shared)
    nc_again = NeuralCollapseMonitor(feature_cache_mb=0, prefix="nc_again", **shared)
    dse = DiffusionSpectralEntropyMonitor(layers=["penultimate", "backbone.layers.fc1"], num_clusters=4, **shared)
    probe = HeadIsSharded()
    trainer = Trainer(
        max_epochs=1, limit_train_batches=4, limit_val_batches=0, use_distributed_sampler=False,
        default_root_dir=root, callbacks=[nc, nc_again, dse, probe], **QUIET, **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(task, SequentialDigits(batch_size=batch))
    return {"history": {**nc.history, **nc_again.history, **dse.history}, "sharded": any(probe.sharded)}


def fsdp2_rank(rank: int, world_size: int, root: str) -> dict[str, Any]:
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(world_size))  # as torchrun sets them
    dist.set_timeout(timedelta(seconds=60))  # a collective one rank misses fails instead of hanging
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=False)
    return fit(Path(root), PER_RANK, accelerator="cpu", devices=2, strategy=strategy)


@pytest.mark.slow
def test_monitors_under_fsdp2_measure_what_one_process_measures(tmp_path):
    rank0, rank1 = run_in_ddp(fsdp2_rank, str(tmp_path / "fsdp2"))
    single = fit(tmp_path / "single", 2 * PER_RANK, accelerator="cpu", devices=1)
    assert rank0["sharded"] and not single["sharded"]  # the FSDP2 classifier really was a DTensor
    assert rank0["history"] == rank1["history"]  # every rank logs the same values
    assert sorted(rank0["history"]) == sorted(single["history"])
    assert {"nc/train/nc3", "nc/heldout/nc4", "dse/penultimate", "dsmi_x/backbone.layers.fc1"} <= set(rank0["history"])
    for name, values in sorted(rank0["history"].items()):
        print(f"{name}: {values} vs {single['history'][name]}")
        assert values == pytest.approx(single["history"][name], rel=1e-5, abs=1e-7), name
    for name in (n for n in rank0["history"] if n.startswith("nc/")):
        assert rank0["history"][name] == rank0["history"][name.replace("nc/", "nc_again/")]  # cache = second forwards
