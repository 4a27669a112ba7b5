"""AdversarialRobustnessMonitor in real Trainer.fit runs: values, resume, DDP, plots."""

from __future__ import annotations

import pytest
import torch

from lightning_regs.callbacks import robustness_monitor
from lightning_regs.callbacks.robustness_monitor import AdversarialRobustnessMonitor
from lightning_regs.functional.adversarial import pgd_attack, predict, random_perturbation
from tests.helpers.grokking_monitors import fit_with_monitor
from tests.helpers.official_pgd import official_linf_pgd


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


@pytest.mark.parametrize("preset", ["official", "library"])
def test_the_official_preset_attacks_as_the_official_pgd_does(tmp_path, monkeypatch, preset):
    """Official: step epsilon*4/50, start and steps clamped to the points' range; library: epsilon/4, no clamp."""
    attacks: list[tuple[torch.Tensor, ...]] = []

    def recording_pgd(model, x, y, *args, **kwargs):
        adversarial = pgd_attack(model, x, y, *args, **kwargs)
        attacks.append((x.clone(), y.clone(), kwargs["start"].clone(), adversarial.clone()))
        return adversarial

    monkeypatch.setattr(robustness_monitor, "pgd_attack", recording_pgd)
    monitor = make_monitor(epsilon=0.5, preset=preset)
    task, _ = fit_with_monitor(tmp_path, monitor)
    images = monitor.points["images"]
    low, high = float(images.min()), float(images.max())
    x, y, start, ours = attacks[-1]  # the last measurement, on the trained model
    assert bool(((x + start) < low).any()), "an unclamped start must leave the points' range for the test to bite"
    official = official_linf_pgd(task, x, y, 0.5, 0.5 * 4 / 50, 4, start, low, high)
    if preset == "official":
        assert monitor.step_size == pytest.approx(0.04) and monitor.input_range == "data"
        torch.testing.assert_close(ours, official, rtol=0, atol=1e-6)
    else:
        assert monitor.step_size == pytest.approx(0.125) and monitor.input_range is None
        assert (ours - official).abs().max() > 0.1  # the library's attack is not the official one
        assert bool((ours < low - 1e-6).any())  # and leaves the data range


def test_preset_and_input_range_errors_are_named_and_the_library_state_key_is_unchanged():
    with pytest.raises(ValueError, match="preset must be 'library' or 'official'"):
        AdversarialRobustnessMonitor(preset="paper")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="input_range must be"):
        AdversarialRobustnessMonitor(input_range="batch")  # type: ignore[arg-type]
    library = make_monitor()
    assert "preset" not in library.state_key  # checkpoints written before the preset existed still resume
    assert library.state_key != make_monitor(preset="official").state_key
    explicit = AdversarialRobustnessMonitor(epsilon=0.2, step_size=0.01, input_range=(0, 1), preset="official")
    assert explicit.step_size == 0.01 and explicit.input_range == (0, 1)  # what is given wins over the preset
