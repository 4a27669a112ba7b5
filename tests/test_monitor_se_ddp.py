"""The monitors' ``_se`` errors do not depend on how the points are split: batch sizes, two DDP ranks, one process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_regs.callbacks import DiffusionSpectralEntropyMonitor, NeuralCollapseMonitor
from lightning_regs.datamodules import DigitsDataModule
from tests.helpers.ddp import DDP_SPAWN_CPU
from tests.helpers.grokking_monitors import small_task
from tests.helpers.monitors import SaveHistories
from tests.helpers.trainers import QUIET


def fit(root: Path, batch_size: int, feature_cache_mb: float, **trainer_kwargs: Any) -> None:
    """Two measurements (steps 0 and 1) of 41 points per set; lr = 0, so every run measures the same weights."""
    root.mkdir(parents=True)
    seed_everything(0)
    shared = {"num_points": 41, "every_n_steps": 1, "batch_size": batch_size, "max_overhead": None, "plot": False}
    monitors = [
        NeuralCollapseMonitor(bootstrap=8, feature_cache_mb=feature_cache_mb, **shared),
        DiffusionSpectralEntropyMonitor(sets=["train", "heldout"], num_clusters=4, subsamples=4, **shared),
    ]
    trainer = Trainer(
        max_steps=1, limit_val_batches=0, callbacks=[*monitors, SaveHistories(str(root))], **QUIET, **trainer_kwargs
    )
    trainer.fit(small_task(lr=0.0), DigitsDataModule(batch_size=64))


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small float64 problems: two threads on two shared cores oversubscribe
    yield
    torch.set_num_threads(threads)


def test_the_errors_are_the_same_on_two_ranks_and_one_process_in_any_batches(tmp_path):
    # 41 points: 21 and 20 per rank, in chunks of 16 and from the cache; one process: chunks of 7, forwards again.
    fit(tmp_path / "ddp", batch_size=16, feature_cache_mb=256, **DDP_SPAWN_CPU)
    fit(tmp_path / "single", batch_size=7, feature_cache_mb=0, accelerator="cpu", devices=1)
    rank0, rank1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1))
    (single,) = (torch.load(tmp_path / "single" / "rank0.pt"),)
    errors = sorted(name for name in single if name.endswith("_se"))
    assert len(errors) == 2 * 10 + 2 * 3  # NC: 10 metrics × 2 sets; DSE, DSMI(Y), DSMI(X) × 2 sets
    assert rank0 == rank1  # every rank logs the same bits
    assert sorted(rank0) == sorted(single)
    for name in errors:
        assert len(single[name]) == 2 and all(value > 0 for value in single[name]), name
        # float32 forwards of other batch compositions: the features agree to rounding, and so do the errors
        assert rank0[name] == pytest.approx(single[name], rel=1e-5, abs=1e-8), name
