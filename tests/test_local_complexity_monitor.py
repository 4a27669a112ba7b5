"""LocalComplexityMonitor in real Trainer.fit runs: values, schedule, plots, resume, DDP."""

from __future__ import annotations

import itertools

import pytest
import torch
from lightning.pytorch.loggers import WandbLogger

from lightning_regs.callbacks.local_complexity_monitor import LocalComplexityMonitor
from lightning_regs.callbacks.scheduled_monitor import measurement_steps
from lightning_regs.functional.local_complexity import local_complexity
from tests.helpers.grokking_monitors import fit_with_monitor


def make_monitor(**kwargs) -> LocalComplexityMonitor:
    options = {
        "radius": 0.5,
        "num_directions": 4,
        "num_points": 25,
        "num_measurements": 5,
        "seed": 3,
        "max_overhead": None,
        "log_per_layer": True,
    }
    return LocalComplexityMonitor(**{**options, **kwargs})


def recompute(model, monitor: LocalComplexityMonitor, name: str) -> float:
    points = monitor.points[name]
    result = local_complexity(model, points, monitor.radii[0], directions=monitor.points["directions"])
    return float(result.total().double().mean())


def test_measure_schedule_is_log_spaced_with_the_start_and_the_end():
    steps = measurement_steps(500_000, num_measurements=48)
    assert steps[0] == 0 and steps[1] == 1 and steps[-1] == 500_000 and 40 <= len(steps) <= 48
    assert all(b > a for a, b in itertools.pairwise(steps))
    assert measurement_steps(12, every_n_steps=5) == [0, 5, 10, 12]
    with pytest.raises(ValueError, match="max_steps"):
        measurement_steps(0)


def test_fit_logs_lc_at_the_scheduled_steps_and_the_values_are_the_functional_ones(tmp_path):
    monitor = make_monitor()
    task, trainer = fit_with_monitor(tmp_path, monitor)
    assert monitor.measured_steps == [0, 1, 2, 5, 12]
    logged = [(step, metrics) for step, metrics in trainer.logger.logged if "lc/train" in metrics]
    assert [step for step, _ in logged] == [0, 1, 2, 5, 12]
    assert {"lc/train", "lc/heldout", "lc/random", "lc/train/backbone.layers.fc1.2"} <= set(logged[-1][1])
    assert monitor.points["train"].shape == monitor.points["heldout"].shape == (25, 1, 8, 8)
    for name in ("train", "heldout", "random"):
        assert logged[-1][1][f"lc/{name}"] == pytest.approx(recompute(task, monitor, name), abs=1e-9)
    layers = [v for k, v in logged[-1][1].items() if k.startswith("lc/train/") and not k.endswith("_se")]
    assert sum(layers) == pytest.approx(logged[-1][1]["lc/train"])
    for name in ("train", "heldout", "random"):  # the standard error over the points, recomputed
        counts = local_complexity(task, monitor.points[name], monitor.radii[0], directions=monitor.points["directions"])
        expected = float(counts.total().double().std() / counts.total().shape[0] ** 0.5)
        assert logged[-1][1][f"lc/{name}_se"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert logged[-1][1]["lc/train"] > 0
    random = monitor.points["random"]
    assert float(random.min()) >= float(monitor.points["train"].min())
    assert float(random.max()) <= float(monitor.points["train"].max())
    assert (tmp_path / "lc.png").stat().st_size > 1000
    assert task.training  # the measurement left the module in training mode


def test_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    monitor = make_monitor()
    fit_with_monitor(tmp_path, monitor, max_steps=3)
    torch.save(monitor.state_dict(), tmp_path / "state.pt")
    fresh = make_monitor()
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert fresh.measured_steps == monitor.measured_steps and fresh.history == monitor.history
    for key, value in monitor.points.items():
        assert torch.equal(fresh.points[key], value)
    assert make_monitor().state_key != make_monitor(radius=0.1).state_key


def test_plot_goes_to_wandb_with_a_wandb_logger(tmp_path, wandb_mock):
    logger = WandbLogger(project="lightning-regs-test", save_dir=str(tmp_path))
    fit_with_monitor(tmp_path, make_monitor(every_n_steps=6, num_measurements=None), logger=logger)
    sent = [call.args[0] for call in wandb_mock.run_mock.log.call_args_list]
    assert any("lc" in payload for payload in sent)
    assert any(payload.get("lc/train") is not None for payload in sent)
    assert not (tmp_path / "lc.png").exists()


def test_several_radii_get_their_own_names_and_bad_arguments_are_named(tmp_path):
    monitor = make_monitor(radius=[0.1, 1.0], log_per_layer=False, sets=("train",))
    fit_with_monitor(tmp_path, monitor, max_steps=2)
    assert set(monitor.history) == {"lc/train@r=0.1", "lc/train@r=1", "lc/train@r=0.1_se", "lc/train@r=1_se"}
    assert monitor.history["lc/train@r=0.1"][-1] <= monitor.history["lc/train@r=1"][-1]
    with pytest.raises(ValueError, match="radius"):
        LocalComplexityMonitor(radius=0.0)
    with pytest.raises(ValueError, match="sets"):
        LocalComplexityMonitor(sets=("validation",))
