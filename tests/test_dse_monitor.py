"""DiffusionSpectralEntropyMonitor in fits: the functional values per layer and probe set, names, errors, the RNG."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback

from lightning_regs.callbacks import DiffusionSpectralEntropyMonitor
from lightning_regs.functional.bootstrap import derive_seed, half_sample_errors
from lightning_regs.functional.diffusion_entropy import (
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
    discretize,
    median_distance,
)
from tests.helpers.grokking_monitors import fit_with_monitor


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small float64 eigenproblems: two threads on two shared cores oversubscribe
    yield
    torch.set_num_threads(threads)


def make_monitor(**kwargs) -> DiffusionSpectralEntropyMonitor:
    options = {"layers": ["penultimate", "backbone.layers.fc1"], "sets": ["train", "heldout"], "num_points": 50,
               "num_clusters": 5, "every_n_epochs": 1, "max_overhead": None, "plot": False, "seed": 2}  # fmt: skip
    return DiffusionSpectralEntropyMonitor(**{**options, **kwargs})


def layer_outputs(task, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The classifier's input and fc1's output of ``images``, read here with hooks of our own."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        task.backbone.head.register_forward_pre_hook(lambda m, args: seen.__setitem__("penultimate", args[0])),
        task.backbone.layers.fc1.register_forward_hook(lambda m, a, out: seen.__setitem__("backbone.layers.fc1", out)),
    ]
    task.eval()
    with torch.no_grad():
        task(images)
    for handle in handles:
        handle.remove()
    return {name: value.flatten(1) for name, value in seen.items()}


def test_fit_logs_dse_and_both_dsmi_per_layer_and_probe_and_they_are_the_functional_ones(tmp_path):
    monitor = make_monitor()
    task, trainer = fit_with_monitor(tmp_path, monitor, max_epochs=4)
    assert monitor.measured_steps == [0, 3, 6, 9, 12]  # every epoch
    expected = {f"{kind}/{layer}{suffix}{error}" for kind in ("dse", "dsmi_y", "dsmi_x")
                for layer in ("penultimate", "backbone.layers.fc1") for suffix in ("", "@heldout")
                for error in ("", "_se")}  # fmt: skip
    assert set(monitor.history) == expected
    logged = [metrics for _, metrics in trainer.logger.logged if "dse/penultimate" in metrics][-1]
    assert "dse/overhead" in logged
    errors = [value for name, values in monitor.history.items() if name.endswith("_se") for value in values]
    assert len(errors) == 5 * 12 and all(math.isfinite(e) and e >= 0 for e in errors)
    assert sum(e > 0 for e in errors) > len(errors) / 2  # real spreads, not a constant 0
    step = monitor.measured_steps[-1]
    for set_name, suffix in (("train", ""), ("heldout", "@heldout")):
        images, labels = monitor.labelled_points(set_name)
        clusters = monitor.points[f"{set_name}_clusters"]
        assert torch.equal(clusters, discretize(images, num_clusters=5, seed=2))
        for layer, z in layer_outputs(task, images).items():
            sigma = median_distance(z)
            assert logged[f"dse/{layer}{suffix}"] == pytest.approx(diffusion_spectral_entropy(z, sigma), rel=1e-6)
            for kind, y, offset in (("dsmi_y", labels, 1000), ("dsmi_x", clusters, 2000)):
                reference = diffusion_spectral_mutual_information(
                    z, y, sigma=sigma, generator=monitor.generator(offset + step)
                )
                assert logged[f"{kind}/{layer}{suffix}"] == pytest.approx(reference, rel=1e-6, abs=1e-9), kind
    history = monitor.history["dsmi_y/penultimate"]
    assert history[-1] > history[0]  # the features learn the classes


def test_a_fixed_sigma_and_t_are_used_and_the_error_is_the_half_sampling_one(tmp_path):
    options = {"layers": "penultimate", "sets": ["train"], "sigma": 3.0, "t": 4, "labels": False, "inputs": False}
    monitor = make_monitor(subsamples=5, **options)
    task, _ = fit_with_monitor(tmp_path, monitor, max_epochs=1, max_steps=3)
    assert set(monitor.history) == {"dse/penultimate", "dse/penultimate_se"}
    z = layer_outputs(task, monitor.points["train"])["penultimate"]
    assert monitor.history["dse/penultimate"][-1] == pytest.approx(diffusion_spectral_entropy(z, 3.0, t=4), rel=1e-6)
    # The same half-samples: a generator keyed by (seed, step, probe set), never the global RNG.
    generator = torch.Generator().manual_seed(derive_seed(2, monitor.measured_steps[-1], 0))
    error = half_sample_errors(lambda i: {"dse": diffusion_spectral_entropy(z[i], 3.0, t=4)}, 50, 5, generator)
    assert monitor.history["dse/penultimate_se"][-1] == pytest.approx(error["dse"], rel=1e-5)


def test_subsamples_0_logs_no_errors_and_tiny_probes_get_nan():
    monitor = make_monitor(layers="penultimate", sets=["train"], subsamples=0)
    targets = torch.arange(4).repeat(3)
    monitor.points = {"train_targets": targets, "train_clusters": targets % 2}
    z = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    values = monitor._entropies(SimpleNamespace(global_step=0), "train", {"penultimate": z})
    assert sorted(values) == ["dse/penultimate", "dsmi_x/penultimate", "dsmi_y/penultimate"]
    monitor = make_monitor(layers="penultimate", sets=["train"], subsamples=4)
    monitor.points = {"train_targets": targets[:3], "train_clusters": targets[:3] % 2}
    values = monitor._entropies(SimpleNamespace(global_step=0), "train", {"penultimate": z[:3]})
    assert len(values) == 6 and all(math.isnan(values[name]) for name in values if name.endswith("_se"))


def test_the_monitor_leaves_training_untouched(tmp_path):
    with_monitor, _ = fit_with_monitor(tmp_path / "a", make_monitor(), max_epochs=2, max_steps=6)
    without, _ = fit_with_monitor(tmp_path / "b", Callback(), max_epochs=2, max_steps=6)
    for key, value in with_monitor.state_dict().items():
        assert torch.equal(value, without.state_dict()[key]), key


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="distinct module names"):
        DiffusionSpectralEntropyMonitor(layers=["a", "a"])
    with pytest.raises(ValueError, match=r"sigma .*must be a finite number > 0"):
        DiffusionSpectralEntropyMonitor(sigma=0.0)
    with pytest.raises(ValueError, match="num_clusters must be an int >= 2"):
        DiffusionSpectralEntropyMonitor(num_clusters=1)
    with pytest.raises(ValueError, match="subsamples must be 0"):
        DiffusionSpectralEntropyMonitor(subsamples=1)
    with pytest.raises(ValueError, match=r"has no such module; its modules include \['backbone', 'backbone.layers'"):
        fit_with_monitor(tmp_path, make_monitor(layers=["backbone.nope"]), max_epochs=1, max_steps=3)
