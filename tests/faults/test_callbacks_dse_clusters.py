"""DSE with a probe no larger than its input clusters is refused by name (each point would be its own cluster)."""

from __future__ import annotations

import pytest

from lightning_regs.callbacks import DiffusionSpectralEntropyMonitor
from tests.helpers.grokking_monitors import fit_with_monitor


def _monitor(num_points: int, num_clusters: int, inputs: bool = True) -> DiffusionSpectralEntropyMonitor:
    return DiffusionSpectralEntropyMonitor(
        layers=["penultimate"], sets=["train"], num_points=num_points, num_clusters=num_clusters, inputs=inputs,
        every_n_epochs=1, max_overhead=None, plot=False, subsamples=0,
    )  # fmt: skip


@pytest.mark.fault(area="callbacks", outcome="refused")
@pytest.mark.parametrize(("num_points", "num_clusters"), [(4, 10), (10, 10), (3, 5)])
def test_a_probe_not_larger_than_the_clusters_is_refused(tmp_path, num_points, num_clusters):
    with pytest.raises(ValueError, match=rf"train probe has {num_points} points.*num_clusters={num_clusters}.*inputs"):
        fit_with_monitor(tmp_path, _monitor(num_points, num_clusters), max_epochs=1, max_steps=2)


@pytest.mark.fault(area="callbacks", outcome="handled")
def test_without_input_clusters_a_small_probe_is_measured(tmp_path):
    monitor = _monitor(4, 10, inputs=False)
    fit_with_monitor(tmp_path, monitor, max_epochs=1, max_steps=2)
    assert monitor.measured_steps and "dse/penultimate" in monitor.history
