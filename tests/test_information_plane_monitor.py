"""InformationPlaneMonitor: logged values are the estimators' on the probe features; own modules, errors, plot, DDP."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_regs.callbacks import InformationPlaneMonitor
from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.functional import adaptive_binning, kde_upper, lossy_knn
from lightning_regs.functional.bootstrap import derive_seed
from lightning_regs.models import MLP
from lightning_regs.tasks import ImageClassifier
from tests.helpers.ddp import DDP_SPAWN_CPU
from tests.helpers.grokking_monitors import small_task
from tests.helpers.loggers import RecordingLogger
from tests.helpers.monitors import SaveHistories
from tests.helpers.trainers import QUIET

ESTIMATORS = ("adaptive_binning", "kde_upper", "lossy_knn")
SMALL = {"k": 3, "subsamples": 4, "max_overhead": None, "plot": False}
RELUS = ("backbone.layers.fc1.2", "backbone.layers.fc2.1")  # the MLP's activation modules


def monitors(**kwargs: Any) -> list[InformationPlaneMonitor]:
    """One monitor per estimator, prefixed by it."""
    return [InformationPlaneMonitor(estimator=name, prefix=name, **{**SMALL, **kwargs}) for name in ESTIMATORS]


def relu_features(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs of the MLP's ReLU modules on ``images``, read here by hooks of the test's own."""
    features: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda module, args, out, name=name: features.__setitem__(name, out.detach().double())
        )
        for name in RELUS
    ]
    model.eval()
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return features


def test_the_logged_values_are_the_estimators_on_the_probes_features(tmp_path):
    logger = RecordingLogger()
    measured = monitors(num_points=240, every_n_steps=4)  # > 2k points of each class: lossy_knn's errors
    seed_everything(0)
    task = ImageClassifier(MLP(in_features=64, num_classes=10, width=16, depth=3), 10, lr=0.05)
    trainer = Trainer(max_steps=8, limit_val_batches=0, default_root_dir=tmp_path, callbacks=measured,
                      **{**QUIET, "logger": logger})  # fmt: skip
    trainer.fit(task, DigitsDataModule(batch_size=32))
    images, targets = measured[0].labelled_points("train")
    assert all(torch.equal(m.points["train"], images) for m in measured)  # the same probe, drawn once
    features = relu_features(task, images)  # the weights of the last measurement (step 8, the end of fit)
    noise = torch.Generator().manual_seed(derive_seed(0, 8, 0, 1))  # the documented seed: (seed, step, set, 1)
    for name in RELUS:
        expected = {
            "adaptive_binning": adaptive_binning(features[name], targets, 30, "relu"),
            "kde_upper": kde_upper(features[name], targets, 0.01),
            "lossy_knn": lossy_knn(features[name], targets, 0.1, 8, 3, noise),  # the layers in order, one generator
        }
        for monitor in measured:
            prefix = monitor.prefix
            assert monitor.measured_steps == [0, 4, 8]
            ixt, ity = expected[prefix]
            assert monitor.history[f"{prefix}/{name}/ixt"][-1] == pytest.approx(ixt, rel=1e-6, abs=1e-9)
            assert monitor.history[f"{prefix}/{name}/ity"][-1] == pytest.approx(ity, rel=1e-6, abs=1e-9)
            for quantity in ("ixt", "ity", "ixt_se", "ity_se"):
                assert logger.series(f"{prefix}/{name}/{quantity}") == monitor.history[f"{prefix}/{name}/{quantity}"]
            assert all(value >= 0 and math.isfinite(value) for value in monitor.history[f"{prefix}/{name}/ity_se"])
            if prefix != "lossy_knn":  # a deterministic layer on N distinct inputs: at most log2 N
                assert max(monitor.history[f"{prefix}/{name}/ixt"]) <= math.log2(240) + 1e-9
            assert max(monitor.history[f"{prefix}/{name}/ity"]) <= math.log2(10) + 1e-9
    assert {f"{p}/overhead" for p in ESTIMATORS} <= logger.names()


class OwnNet(LightningModule):
    """A researcher's own module on ``(x, y)`` loaders, returning an object with ``.logits``; ``shared`` runs twice."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 16), nn.ReLU())
        self.mid = nn.Linear(16, 16)
        self.shared = nn.ReLU()
        self.out = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.out(self.shared(self.mid(self.shared(self.body(x))))))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]).logits, batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_an_own_module_on_loaders_with_an_object_output(tmp_path):
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(96, 1, 8, 8, generator=generator), torch.arange(96) % 4)
    monitor = InformationPlaneMonitor(num_points=64, num_measurements=2, **SMALL)
    seed_everything(0)
    trainer = Trainer(max_steps=3, default_root_dir=tmp_path, callbacks=[monitor], **QUIET)
    with pytest.warns(UserWarning, match=r"shared \(2×\)"):  # a module that runs twice is not one layer
        trainer.fit(OwnNet(), DataLoader(data, batch_size=16))
    assert sorted(monitor.history) == sorted(
        f"ip/{layer}/{q}" for layer in ("body.2", "body.4") for q in ("ixt", "ity", "ixt_se", "ity_se")
    )
    assert all(math.isfinite(v) for values in monitor.history.values() for v in values)
    penultimate = InformationPlaneMonitor(layers="penultimate", estimator="kde_upper", num_points=64,
                                          num_measurements=2, **SMALL)  # fmt: skip
    Trainer(max_steps=2, default_root_dir=tmp_path, callbacks=[penultimate], **QUIET).fit(
        OwnNet(), DataLoader(data, batch_size=16)
    )
    assert set(penultimate.history) == {f"ip/penultimate/{q}" for q in ("ixt", "ity", "ixt_se", "ity_se")}


def test_bad_arguments_and_unmeasurable_settings_are_named(tmp_path):
    for kwargs, match in (
        ({"estimator": "mine"}, "estimator must be one of"),
        ({"layers": []}, "layers must be a non-empty list of distinct module names"),
        ({"layers": ["a", "a"]}, "layers must be a non-empty list of distinct module names"),
        ({"num_bins": 1}, "num_bins"),
        ({"num_components": 0}, "num_components"),
        ({"k": 0}, "k must be"),
        ({"sigma": 0.0}, "sigma"),
        ({"noise_ratio": -1.0}, "noise_ratio"),
        ({"subsamples": 1}, "subsamples"),
        ({"sets": ["val"]}, "sets"),
    ):
        with pytest.raises(ValueError, match=match):
            InformationPlaneMonitor(**kwargs)

    def fit(monitor: InformationPlaneMonitor, backbone: nn.Module | None = None) -> None:
        task = ImageClassifier(backbone or MLP(in_features=64, num_classes=10, width=8, depth=3), 10)
        Trainer(max_steps=1, limit_val_batches=0, default_root_dir=tmp_path, callbacks=[monitor], **QUIET).fit(
            task, DigitsDataModule(batch_size=32)
        )

    with pytest.raises(ValueError, match="has no such module"):
        fit(InformationPlaneMonitor(layers=["backbone.nope"], num_points=16, **SMALL))
    with pytest.raises(ValueError, match=r"needs more than k probe points in every class"):
        fit(InformationPlaneMonitor(estimator="lossy_knn", num_points=16, **SMALL))
    with pytest.raises(ValueError, match="has none"):
        fit(InformationPlaneMonitor(num_points=16, **SMALL), nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))


def test_the_information_plane_is_drawn_when_matplotlib_is_present(tmp_path):
    pytest.importorskip("matplotlib")
    monitor = InformationPlaneMonitor(num_points=32, num_measurements=3, **{**SMALL, "plot": True})
    seed_everything(0)
    Trainer(max_steps=4, limit_val_batches=0, default_root_dir=tmp_path, callbacks=[monitor], **QUIET).fit(
        small_task(), DigitsDataModule(batch_size=32)
    )
    path = tmp_path / "information_plane.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def fit_for_ranks(root: Path, batch_size: int, **trainer_kwargs: Any) -> dict[str, list[float]]:
    """Two measurements (steps 0 and 1) of 161 points; lr = 0, so every run measures the same weights."""
    root.mkdir(parents=True)
    seed_everything(0)
    callbacks = [*monitors(num_points=161, every_n_steps=1, batch_size=batch_size), SaveHistories(str(root))]
    trainer = Trainer(max_steps=1, limit_val_batches=0, callbacks=callbacks, **QUIET, **trainer_kwargs)
    trainer.fit(small_task(lr=0.0), DigitsDataModule(batch_size=64))
    return torch.load(root / "rank0.pt")


def test_two_ddp_ranks_log_the_single_process_values_in_any_batches(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # 161 points: 81 and 80 per rank in chunks of 16; one process in chunks of 7
        fit_for_ranks(tmp_path / "ddp", batch_size=16, **DDP_SPAWN_CPU)
        single = fit_for_ranks(tmp_path / "single", batch_size=7, accelerator="cpu", devices=1)
    finally:
        torch.set_num_threads(threads)
    rank0, rank1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1))
    assert rank0 == rank1  # every rank logs the same bits
    assert len(single) == 3 * 2 * 4  # three estimators × two layers × (ixt, ity and their errors)
    assert sorted(rank0) == sorted(single)
    for name, values in single.items():
        assert len(values) == 2 and all(math.isfinite(v) for v in values), name
        assert rank0[name] == pytest.approx(values, rel=1e-6, abs=1e-9), name  # float32 forwards in other chunks
