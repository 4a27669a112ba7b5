"""AdversarialRobustnessMonitor in real Trainer.fit runs: values, resume, DDP, plots."""

from __future__ import annotations

import pytest
import torch

from lightning_regs.callbacks.robustness_monitor import AdversarialRobustnessMonitor
from lightning_regs.functional.adversarial import pgd_attack, predict, random_perturbation
from tests.helpers.grokking_monitors import fit_with_monitor


def make_monitor(**kwargs) -> AdversarialRobustnessMonitor:
    options = {"epsilon": 0.3, "steps": 4, "num_points": 41, "num_measurements": 4, "seed": 5, "max_overhead": None}
    return AdversarialRobustnessMonitor(**{**options, **kwargs})


def recompute(model, monitor: AdversarialRobustnessMonitor, step: int) -> tuple[float, float]:
    images, targets = monitor.points["images"], monitor.points["targets"]
    start = random_perturbation(images, monitor.epsilon, monitor.norm, monitor.generator(10 + step))
    adversarial = pgd_attack(model, images, targets, monitor.epsilon, monitor.step_size, 4, monitor.norm, start=start)
    return float(predict(model, adversarial).eq(targets).double().mean()), float(
        predict(model, images).eq(targets).double().mean()
    )


def test_fit_logs_robust_beside_clean_accuracy_with_the_functional_values(tmp_path):
    monitor = make_monitor()
    task, trainer = fit_with_monitor(tmp_path, monitor)
    logged = [(step, metrics) for step, metrics in trainer.logger.logged if "robust/acc" in metrics]
    assert [step for step, _ in logged] == monitor.measured_steps == [0, 1, 3, 12]
    robust, clean = recompute(task, monitor, 12)
    assert logged[-1][1]["robust/acc"] == pytest.approx(robust, abs=1e-12)
    assert logged[-1][1]["robust/clean_acc"] == pytest.approx(clean, abs=1e-12)
    assert logged[-1][1]["robust/acc"] < logged[-1][1]["robust/clean_acc"]  # the attack bites
    assert monitor.points["images"].shape == (41, 1, 8, 8) and monitor.points["targets"].dtype == torch.long
    assert (tmp_path / "robust.png").stat().st_size > 1000
    assert task.training


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="norm"):
        AdversarialRobustnessMonitor(norm="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epsilon"):
        AdversarialRobustnessMonitor(epsilon=0.0)
    assert make_monitor().state_key != make_monitor(norm="l2").state_key
