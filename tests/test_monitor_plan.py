"""Monitor plans in counted work (issue 28): the same steps on every machine, at least 8 of them, with error bars."""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_regs.callbacks import (
    AdversarialRobustnessMonitor,
    DiffusionSpectralEntropyMonitor,
    LocalComplexityMonitor,
    LocalLearningCoefficientMonitor,
    NeuralCollapseMonitor,
    ScheduledMonitor,
)
from lightning_regs.callbacks._plots import plot_curves
from lightning_regs.callbacks.monitor_points import draw_from_dataset
from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.functional import local_complexity, mean_and_standard_error, orthonormal_directions
from lightning_regs.models import MLP
from lightning_regs.tasks import ImageClassifier
from tests.helpers.ddp import DDP_SPAWN_CPU
from tests.helpers.monitors import StepCounter
from tests.helpers.trainers import QUIET


def task() -> ImageClassifier:
    return ImageClassifier(MLP(in_features=64, num_classes=10, width=16, depth=2), 10)


def fit(root: Path, monitors: list[Callback], max_steps: int, batch_size: int = 64, **kwargs) -> Trainer:
    seed_everything(0)
    trainer = Trainer(max_steps=max_steps, limit_val_batches=1, default_root_dir=root, callbacks=monitors,
                      **{**QUIET, **kwargs})  # fmt: skip
    trainer.fit(task(), DigitsDataModule(batch_size=batch_size))
    return trainer


def default_monitors() -> list[ScheduledMonitor]:
    return [
        LocalComplexityMonitor(plot=False),
        AdversarialRobustnessMonitor(plot=False),
        NeuralCollapseMonitor(plot=False),
        DiffusionSpectralEntropyMonitor(plot=False),
        LocalLearningCoefficientMonitor(plot=False),
    ]


def test_every_monitor_at_its_defaults_takes_8_log_spaced_measurements_of_a_1000_step_run(tmp_path):
    monitors = default_monitors()
    fit(tmp_path, monitors, max_steps=1000)
    for monitor in monitors:
        name = type(monitor).__name__
        steps = monitor.measured_steps
        assert len(steps) >= 8 and steps[0] == 0 and steps[-1] == 1000, name
        assert steps == monitor.steps and not monitor.skipped_steps, name  # the plan, all of it
        gaps = [b / a for a, b in itertools.pairwise(steps[1:])]
        assert max(gaps) < 4 * min(gaps), name  # log-spaced: ratios of neighbours alike
        assert monitor.planned_overhead is not None and monitor.planned_overhead <= monitor.max_overhead, name
    lc, robust = monitors[0], monitors[1]
    assert lc.directions_count == 5 and lc.points_per_set == 64  # P traded for measurements before points
    assert {"lc/train_se", "lc/heldout_se", "lc/random_se"} <= set(lc.history)
    assert {"robust/acc_se", "robust/clean_acc_se"} <= set(robust.history)
    for name, values in {**lc.history, **robust.history}.items():
        if name.endswith("_se"):
            assert all(value >= 0 and value == value for value in values), name


class SlowLocalComplexity(LocalComplexityMonitor):
    """Every measurement takes 50 ms longer, as on a loaded machine."""

    def measure(self, trainer, pl_module):
        time.sleep(0.05)
        return super().measure(trainer, pl_module)


def test_the_measured_steps_do_not_depend_on_how_long_a_measurement_takes(tmp_path):
    quick, slow = LocalComplexityMonitor(plot=False), SlowLocalComplexity(plot=False)
    fit(tmp_path / "quick", [quick], max_steps=200)
    fit(tmp_path / "slow", [slow], max_steps=200)
    assert slow.measure_seconds > quick.measure_seconds + 0.3
    assert slow.measured_steps == quick.measured_steps == quick.steps and len(quick.steps) >= 8
    assert slow.points_per_set == quick.points_per_set and slow.directions_count == quick.directions_count
    assert slow.history == quick.history


class SavePlan(Callback):
    """Writes each rank's monitor plan and values to ``<root>/rank<r>.pt`` (spawned ranks return nothing else)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def on_train_end(self, trainer, pl_module):
        monitor = next(c for c in trainer.callbacks if isinstance(c, LocalComplexityMonitor))
        plan = {"steps": monitor.measured_steps, "points": monitor.points_per_set, "P": monitor.directions_count,
                "history": monitor.history}  # fmt: skip
        torch.save(plan, Path(self.root) / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_the_plan_is_the_same_on_one_process_and_on_two_ranks_at_one_global_batch(tmp_path):
    plans = {}
    for name, batch, devices in (("single", 32, {"accelerator": "cpu", "devices": 1}), ("ddp", 16, DDP_SPAWN_CPU)):
        out = tmp_path / name
        out.mkdir()
        monitor = LocalComplexityMonitor(plot=False, sets=("train", "heldout"))
        fit(out, [monitor, SavePlan(str(out))], max_steps=120, batch_size=batch, **devices)
        plans[name] = [torch.load(path, weights_only=True) for path in sorted(out.glob("rank*.pt"))]
    (single,), (rank0, rank1) = plans["single"], plans["ddp"]
    assert len(single["steps"]) >= 8
    for key in ("steps", "points", "P"):
        assert single[key] == rank0[key] == rank1[key], key
    assert rank0["history"] == rank1["history"]  # every rank logs the same values, errors included
    assert {"lc/train_se", "lc/heldout_se"} <= set(rank0["history"])


def test_a_resumed_run_of_another_length_is_planned_again_and_says_so(tmp_path, caplog):
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=20, save_top_k=-1)
    first = LocalComplexityMonitor(plot=False, sets=("train",))
    fit(tmp_path, [first, checkpoints], max_steps=40, enable_checkpointing=True)
    planned_for_40 = list(first.steps)
    resumed = LocalComplexityMonitor(plot=False, sets=("train",))
    seed_everything(0)
    trainer = Trainer(max_steps=200, limit_val_batches=1, default_root_dir=tmp_path, callbacks=[resumed], **QUIET)
    with caplog.at_level(logging.INFO):
        trainer.fit(task(), DigitsDataModule(batch_size=64), ckpt_path=tmp_path / "ckpt" / "step=20.ckpt")
    assert "not the 40 its measurements were planned for" in caplog.text
    assert resumed.total_steps == 200 and resumed.steps[-1] == 200 and resumed.steps != planned_for_40
    kept = [step for step in first.measured_steps if step <= 20]
    assert resumed.measured_steps[: len(kept)] == kept  # the measurements before the checkpoint stay
    assert resumed.measured_steps[-1] == 200 and all(
        step in resumed.steps for step in resumed.measured_steps[len(kept) :]
    )
    assert resumed.points_per_set == first.points_per_set and resumed.directions_count == first.directions_count
    assert torch.equal(resumed.points["train"], first.points["train"])  # the same points measured
    same = LocalComplexityMonitor(plot=False, sets=("train",))
    caplog.clear()
    trainer = Trainer(max_steps=40, limit_val_batches=1, default_root_dir=tmp_path, callbacks=[same], **QUIET)
    with caplog.at_level(logging.INFO):
        trainer.fit(task(), DigitsDataModule(batch_size=64), ckpt_path=tmp_path / "ckpt" / "step=20.ckpt")
    assert "planned again" not in caplog.text and same.steps == planned_for_40
    assert same.history == first.history  # resumed at the same length: the uninterrupted run's values


def test_auto_directions_are_the_papers_25_when_the_budget_allows_and_kept_in_the_checkpoint(tmp_path):
    rich = LocalComplexityMonitor(plot=False, sets=("train",), max_overhead=None)
    fit(tmp_path, [rich], max_steps=3)
    assert rich.directions_count == 25 and rich.points["directions"].shape[0] == 25
    poor = LocalComplexityMonitor(plot=False, sets=("train",))
    fit(tmp_path, [poor], max_steps=100)
    assert poor.directions_count < 25 and poor.points["directions"].shape[0] == poor.directions_count
    restored = LocalComplexityMonitor(plot=False, sets=("train",))
    restored.load_state_dict(poor.state_dict())
    assert restored.directions_count == poor.directions_count and restored.state_key == poor.state_key
    assert LocalComplexityMonitor(num_directions=7).directions_count == 7
    with pytest.raises(TypeError, match="num_directions"):
        LocalComplexityMonitor(num_directions="many")


def test_the_lc_standard_error_matches_the_spread_of_the_mean_over_repeated_point_draws():
    seed_everything(0)
    model = MLP(in_features=64, num_classes=10, width=32, depth=2).eval()
    data = DigitsDataModule()
    data.setup("fit")
    generator = torch.Generator().manual_seed(0)
    pool = draw_from_dataset(data.evaluation_dataset("train"), None, generator)[0]
    directions = orthonormal_directions(pool.shape[1:], 5, generator)
    means, errors = [], []
    for _ in range(60):  # 60 independent draws of 32 points
        points = pool[torch.randperm(pool.shape[0], generator=generator)[:32]]
        totals = local_complexity(model, points, 0.5, directions=directions).total().double()
        mean, error = mean_and_standard_error(totals.sum(), totals.pow(2).sum(), totals.shape[0])
        means.append(float(mean))
        errors.append(float(error))
    spread = float(torch.tensor(means).std())
    typical = float(torch.tensor(errors).pow(2).mean().sqrt())
    print(f"SE {typical:.4f} vs spread {spread:.4f}")
    assert spread > 0 and 0.7 < typical / spread < 1.4  # 60 draws: the spread itself is known to about ±10%


def test_the_standard_error_is_the_sample_deviation_over_root_n_and_needs_two_points():
    x = torch.tensor([3.0, 1.0, 4.0, 1.0, 5.0], dtype=torch.float64)
    mean, error = mean_and_standard_error(x.sum(), x.pow(2).sum(), 5)
    assert float(mean) == pytest.approx(2.8) and float(error) == pytest.approx(float(x.std() / 5**0.5), rel=1e-12)
    assert torch.isnan(mean_and_standard_error(x[:1].sum(), x[:1].pow(2).sum(), 1)[1])
    with pytest.raises(ValueError, match="at least one point"):
        mean_and_standard_error(x.sum(), x.sum(), 0)


def test_errors_are_drawn_as_bands_around_their_curves():
    figure = plot_curves([0, 1, 10], {"lc/train": [1.0, 2.0, 1.5]}, ylabel="LC", errors={"lc/train": [0.1] * 3})
    assert len(figure.axes[0].collections) == 1
    figure = plot_curves([0, 1, 10], {"lc/train": [1.0, 2.0, 1.5]}, ylabel="LC")
    assert len(figure.axes[0].collections) == 0


def test_an_epoch_schedule_resumed_with_more_epochs_measures_the_new_ones(tmp_path, caplog):
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
    first = StepCounter(every_n_epochs=1, max_overhead=None, plot=False)
    seed_everything(0)
    trainer = Trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=1, default_root_dir=tmp_path,
                      callbacks=[first, checkpoints], **{**QUIET, "enable_checkpointing": True})  # fmt: skip
    trainer.fit(task(), DigitsDataModule(batch_size=32))
    assert first.measured_steps == [0, 4, 8]
    resumed = StepCounter(every_n_epochs=1, max_overhead=None, plot=False)
    trainer = Trainer(max_epochs=4, limit_train_batches=4, limit_val_batches=1, default_root_dir=tmp_path,
                      callbacks=[resumed], **QUIET)  # fmt: skip
    with caplog.at_level(logging.INFO):
        trainer.fit(task(), DigitsDataModule(batch_size=32), ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt")
    assert "planned again" in caplog.text
    assert resumed.epochs == [0, 1, 2, 3, 4] and resumed.measured_steps == [0, 4, 8, 12, 16]
