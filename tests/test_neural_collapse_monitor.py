"""NeuralCollapseMonitor in fits: the functional values, the classifier rule, the second pass, the RNG, DTensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_regs.callbacks import NeuralCollapseMonitor
from lightning_regs.callbacks._features import find_classifier, full_tensor
from lightning_regs.functional.bootstrap import derive_seed
from lightning_regs.functional.neural_collapse import neural_collapse
from lightning_regs.functional.neural_collapse_bootstrap import NeuralCollapseBootstrap
from tests.helpers.grokking_monitors import fit_with_monitor
from tests.helpers.trainers import QUIET

NAMES = {"nc1", "nc1_trace", "nc2", "nc2_equinorm", "nc2_equiangle", "nc2_max_angle", "nc3", "nc4", "accuracy", "cdnv"}


def make_monitor(**kwargs) -> NeuralCollapseMonitor:
    options = {"num_points": 60, "batch_size": 25, "every_n_epochs": 1, "max_overhead": None, "plot": False}
    return NeuralCollapseMonitor(**{**options, **kwargs})


def recompute(task, monitor: NeuralCollapseMonitor, set_name: str, step: int) -> dict[str, float]:
    """The functional metrics and bootstrap errors of the points' classifier inputs, read with a hook of our own."""
    images, labels = monitor.labelled_points(set_name)
    head = task.backbone.head
    seen = []
    handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    task.eval()
    with torch.no_grad():
        task(images)
    handle.remove()
    key = derive_seed(monitor.seed, step, ("train", "heldout").index(set_name))  # (seed, step, set)
    bootstrap = NeuralCollapseBootstrap(10, monitor.bootstrap, seed=key)
    bootstrap.update(seen[0], labels, torch.arange(len(labels)))  # one batch: the errors do not depend on the split
    bootstrap.sync().update_ncc(seen[0], labels, torch.arange(len(labels)), head.weight, head.bias)
    errors = bootstrap.sync().standard_errors(head.weight)
    metrics = neural_collapse(seen[0], labels, weight=head.weight, bias=head.bias)
    return {**metrics, **{f"{name}_se": errors[name] for name in metrics}}


def test_fit_logs_every_metric_per_set_each_epoch_and_they_are_the_functional_ones(tmp_path):
    monitor = make_monitor()
    task, trainer = fit_with_monitor(tmp_path, monitor, max_epochs=4)
    assert monitor.measured_steps == [0, 3, 6, 9, 12]  # before training and after each epoch
    names = {f"{n}{error}" for n in NAMES for error in ("", "_se")}  # each metric and its bootstrap error
    assert set(monitor.history) == {f"nc/{s}/{n}" for s in ("train", "heldout") for n in names}
    logged = [metrics for _, metrics in trainer.logger.logged if "nc/train/nc1" in metrics]
    assert len(logged) == 5 and "nc/overhead" in logged[-1]
    errors = [value for metrics in logged for name, value in metrics.items() if name.endswith("_se")]
    assert len(errors) == 5 * 2 * len(NAMES) and all(math.isfinite(e) and e >= 0 for e in errors)
    assert sum(e > 0 for e in errors) > len(errors) / 2  # real spreads, not a constant 0
    for set_name in ("train", "heldout"):
        reference = recompute(task, monitor, set_name, monitor.measured_steps[-1])
        for name in names:
            assert logged[-1][f"nc/{set_name}/{name}"] == pytest.approx(reference[name], rel=1e-6, abs=1e-9), name
    assert monitor.history["nc/train/nc1"][-1] < monitor.history["nc/train/nc1"][0]  # training separates classes


def test_the_second_pass_from_the_cache_equals_running_the_forwards_again(tmp_path):
    fit_with_monitor(tmp_path / "a", cached_monitor := make_monitor(), max_epochs=2, max_steps=6)
    fit_with_monitor(tmp_path / "b", again_monitor := make_monitor(feature_cache_mb=0), max_epochs=2, max_steps=6)
    assert cached_monitor.history == again_monitor.history  # the errors too
    fit_with_monitor(tmp_path / "c", no_errors := make_monitor(bootstrap=0), max_epochs=2, max_steps=6)
    values = {name: v for name, v in cached_monitor.history.items() if not name.endswith("_se")}
    assert no_errors.history == values  # bootstrap=0: the same values, no errors


def test_the_monitor_leaves_training_untouched(tmp_path):
    with_monitor, _ = fit_with_monitor(tmp_path / "a", make_monitor(), max_epochs=2, max_steps=6)
    without, _ = fit_with_monitor(tmp_path / "b", Callback(), max_epochs=2, max_steps=6)
    for key, value in with_monitor.state_dict().items():
        assert torch.equal(value, without.state_dict()[key]), key  # no global RNG draw, no training-mode leak


class OwnClassifier(LightningModule):
    """A user's module: features from ``encoder``, logits from ``fc``; an unused ``Linear`` registered after it."""

    def __init__(self, trailing_linear: bool = False, log_probabilities: bool = False) -> None:
        super().__init__()
        self.log_probabilities = log_probabilities
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU())
        self.fc = nn.Linear(8, 3)
        if trailing_linear:
            self.projector = nn.Linear(8, 4)  # e.g. a contrastive head, not the classifier

    def forward(self, x):
        logits = self.fc(self.encoder(x))
        return logits.log_softmax(dim=1) if self.log_probabilities else logits

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_own(module: LightningModule, monitor: NeuralCollapseMonitor) -> Trainer:
    seed_everything(0)
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(48, 1, 4, 4, generator=generator), torch.arange(3).repeat(16))
    trainer = Trainer(max_epochs=1, callbacks=[monitor], **QUIET)
    trainer.fit(module, DataLoader(data, batch_size=16), DataLoader(data, batch_size=16))
    return trainer


def test_the_classifier_of_a_users_module_on_x_y_data_is_found_or_named():
    monitor = make_monitor(num_points=None)
    fit_own(OwnClassifier(), monitor)
    assert monitor.classifier(fit_own(OwnClassifier(), make_monitor()).lightning_module)[0] == "fc"
    assert monitor.history["nc/train/accuracy"] and monitor.points["train"].shape == (48, 1, 4, 4)
    with pytest.raises(ValueError, match=r"hooks 'projector' .* it ran 0 times in one forward.*submodule="):
        fit_own(OwnClassifier(trailing_linear=True), make_monitor())
    with pytest.raises(ValueError, match=r"hooks 'fc' .* its output is not the LightningModule's output.*submodule="):
        fit_own(OwnClassifier(log_probabilities=True), make_monitor())
    fit_own(OwnClassifier(log_probabilities=True), make_monitor(submodule="fc"))  # named: log-probabilities are fine
    named = make_monitor(submodule="fc")
    fit_own(OwnClassifier(trailing_linear=True), named)
    assert named.history["nc/train/nc1"]
    with pytest.raises(ValueError, match=r"has no such submodule; its children are \['encoder', 'fc'\]"):
        fit_own(OwnClassifier(), make_monitor(submodule="head"))


def test_the_default_rule_reads_the_head_of_library_models_and_torchvision_models():
    from torchvision.models import resnet18, vit_b_16

    from lightning_regs.models import MLP, SmallCNN

    holder = nn.Module()
    holder.backbone = SmallCNN(width=8)
    assert find_classifier(holder)[0] == "backbone.head.2"
    holder.backbone = MLP(in_features=4, num_classes=3, width=8, depth=3)
    assert find_classifier(holder)[0] == "backbone.head"
    assert find_classifier(resnet18())[0] == "fc"
    assert find_classifier(vit_b_16())[0] == "heads.head"
    with pytest.raises(ValueError, match=r"Found no nn\.Linear classifier in Sequential"):
        find_classifier(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_sharded_classifier_weights_are_gathered_whole():
    # One process stands in for the FSDP2 layout: a DTensor sharded along dim 0 (tests/test_fsdp2_representation.py
    # runs the monitors under FSDP2 on two processes).
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    weight = torch.randn(10, 6)
    sharded = distribute_tensor(weight, init_device_mesh("cpu", (1,)), [Shard(0)])
    assert type(sharded).__name__ == "DTensor" and torch.equal(full_tensor(sharded), weight)
    assert full_tensor(weight) is weight


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="sets must be a non-empty list of distinct names"):
        NeuralCollapseMonitor(sets=["test"])
    with pytest.raises(ValueError, match="feature_cache_mb"):
        NeuralCollapseMonitor(feature_cache_mb=-1)
    with pytest.raises(ValueError, match="int64 class ids"):
        NeuralCollapseMonitor().set_points(train=(torch.zeros(2, 4), torch.zeros(2, 3)))
    for replicates in (1, -1):
        with pytest.raises(ValueError, match=r"bootstrap must be (0|an int >= 0)"):
            NeuralCollapseMonitor(bootstrap=replicates)
    assert NeuralCollapseMonitor(every_n_steps=5).every_n_epochs is None
