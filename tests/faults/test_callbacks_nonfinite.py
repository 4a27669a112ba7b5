"""Monitors measuring a diverged network or non-finite points log NaN, never a count (issue 22, kind 3).

A network whose weights went NaN has no linear regions, no robust accuracy and no representation to measure: a
count of 0 (or an accuracy of one class's share) would look like a real value, the local-complexity one like the
grokking descent. Every monitor logs NaN for it, with a warning that names the step.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_regs.callbacks import (
    AdversarialRobustnessMonitor,
    DiffusionSpectralEntropyMonitor,
    InformationPlaneMonitor,
    LocalComplexityMonitor,
    LocalLearningCoefficientMonitor,
    NeuralCollapseMonitor,
)
from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.functional.local_complexity import local_complexity
from lightning_regs.models import MLP
from lightning_regs.tasks import ImageClassifier
from tests.helpers.trainers import QUIET

COMMON = {"every_n_steps": 1, "num_points": 24, "max_overhead": None, "plot": False}
MONITORS = {
    "lc": lambda: LocalComplexityMonitor(radius=0.5, num_directions=2, **COMMON),
    "pgd": lambda: AdversarialRobustnessMonitor(epsilon=0.1, steps=2, **COMMON),
    "nc": lambda: NeuralCollapseMonitor(bootstrap=0, **COMMON),
    "dse": lambda: DiffusionSpectralEntropyMonitor(subsamples=0, repeats=1, num_clusters=3, **COMMON),
    "ip": lambda: InformationPlaneMonitor(subsamples=0, **COMMON),
    "llc": lambda: LocalLearningCoefficientMonitor(num_chains=2, num_draws=3, pool_size=48, **COMMON),
}


class _Diverge(Callback):
    """Turns every weight NaN before the first measurement, as a diverged run has them."""

    def on_train_start(self, trainer, pl_module) -> None:
        with torch.no_grad():
            for parameter in pl_module.parameters():
                parameter.fill_(math.nan)


def _fit(monitor: Callback, callbacks: tuple = ()) -> None:
    seed_everything(0)
    model = MLP(in_features=64, num_classes=10, width=16, depth=3)
    kwargs = {"nonfinite": "skip"} if "nonfinite" in inspect.signature(ImageClassifier).parameters else {}
    task = ImageClassifier(model, 10, optimizer="adamw", lr=1e-2, **kwargs)  # a diverged run trains on
    trainer = Trainer(max_steps=2, limit_val_batches=0, callbacks=[*callbacks, monitor], **QUIET)
    trainer.fit(task, DigitsDataModule(batch_size=64))


def _measured(monitor) -> dict[str, list[float]]:
    return {name: values for name, values in monitor.history.items() if not name.endswith("_se")}


@pytest.mark.fault(area="callbacks", outcome="handled")
@pytest.mark.parametrize("name", sorted(MONITORS))
def test_a_diverged_network_is_measured_as_nan_with_a_warning_naming_the_step(name) -> None:
    monitor = MONITORS[name]()
    with pytest.warns(UserWarning, match=r"non-finite.*step 0"):
        _fit(monitor, callbacks=(_Diverge(),))
    assert monitor.measured_steps == [0, 1, 2]
    values = _measured(monitor)
    assert values and all(math.isnan(v) for series in values.values() for v in series), values


def _nan_rows(images: torch.Tensor) -> torch.Tensor:
    images = images.clone()
    images[::3] = math.nan
    return images


@pytest.mark.fault(area="callbacks", outcome="handled")
@pytest.mark.parametrize("name", ["lc", "pgd", "nc", "dse", "ip"])
def test_non_finite_points_are_measured_as_nan_with_a_warning(name) -> None:
    monitor = MONITORS[name]()
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(24, 1, 8, 8, generator=generator), torch.arange(24) % 10
    if name == "lc":
        monitor.sets = ("train",)
        monitor.set_points(train=_nan_rows(images))
    elif name == "pgd":
        monitor.set_points(heldout=(_nan_rows(images), labels))
    else:
        monitor.sets = ("train",)
        monitor.set_points(train=(_nan_rows(images), labels))
    with pytest.warns(UserWarning, match=r"non-finite.*step 0"):
        _fit(monitor)
    values = _measured(monitor)
    assert values and all(math.isnan(v) for series in values.values() for v in series), values


@pytest.mark.fault(area="callbacks", outcome="handled")
def test_the_local_complexity_of_a_nan_point_is_flagged_not_a_count() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    points = torch.tensor([[0.0, 0.0], [math.nan, 0.0]])
    with pytest.warns(UserWarning, match=r"1 of the 2 points.*non-finite"):
        result = local_complexity(model, points, 0.1, num_directions=2)
    assert result.finite.tolist() == [True, False]
    assert math.isnan(float(result.mean_total()))


@pytest.mark.fault(area="callbacks", outcome="handled")
def test_the_local_complexity_of_a_nan_network_is_nan() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with torch.no_grad():
        model[0].weight.fill_(math.nan)
    with pytest.warns(UserWarning, match="non-finite"):
        result = local_complexity(model, torch.zeros(3, 2), 0.1, num_directions=2)
    assert not result.finite.any()
    assert math.isnan(float(result.mean_total()))


@pytest.mark.fault(area="callbacks", outcome="refused")
@pytest.mark.parametrize("radius", [math.nan, math.inf, -0.1, True])
def test_local_complexity_refuses_a_radius_that_is_not_a_finite_non_negative_number(radius) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU())
    with pytest.raises((ValueError, TypeError), match=rf"radius.*{radius}"):
        local_complexity(model, torch.zeros(3, 2), radius, num_directions=2)
