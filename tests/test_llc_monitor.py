"""LocalLearningCoefficientMonitor: λ̂ re-derived with estimate_llc, nβ, losses, the budget, RNG, state, DDP, errors."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from lightning_regs.callbacks import LocalLearningCoefficientMonitor
from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.functional import default_n_beta, estimate_llc
from lightning_regs.models import MLP
from lightning_regs.tasks import GrokkingClassifier, ImageClassifier
from tests.helpers.ddp import DDP_SPAWN_CPU
from tests.helpers.loggers import RecordingLogger
from tests.helpers.trainers import QUIET

SMALL = {"num_chains": 2, "num_draws": 6, "num_points": 16, "pool_size": 64, "plot": False, "max_overhead": None}


def task() -> ImageClassifier:
    return ImageClassifier(MLP(in_features=64, num_classes=10, width=16, depth=2), 10)


def fit(
    root: Path, monitor: Callback, module: LightningModule | None = None, max_steps: int = 12, batch: int = 32, **kwargs
) -> Trainer:
    seed_everything(0)
    trainer = Trainer(max_steps=max_steps, limit_val_batches=1, default_root_dir=root, callbacks=[monitor],
                      **{**QUIET, **kwargs})  # fmt: skip
    trainer.fit(module or task(), DigitsDataModule(batch_size=batch))
    return trainer


class KeepWeights(Callback):
    """The measured module's parameters at each measured step, as the monitor saw them."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def rederived(monitor: LocalLearningCoefficientMonitor, module: ImageClassifier, step: int, n_beta: float) -> float:
    """λ̂ at ``step`` from estimate_llc and a cross-entropy written here, with the monitor's documented seeds."""
    pool, targets = monitor.points["pool"], monitor.points["pool_targets"]
    generator = torch.Generator().manual_seed(monitor.seed * 1_000_003 + 2 * step + 2)
    batches = []
    for _ in range(monitor.num_burnin + monitor.draws_count):
        index = torch.randperm(pool.shape[0], generator=generator)[: monitor.points_per_set]
        batches.append((pool[index], targets[index]))
    module.eval()

    def loss_fn(params, batch):
        return F.cross_entropy(functional_call(module, params, (batch[0],)), batch[1])

    noise = torch.Generator().manual_seed(monitor.seed * 1_000_003 + 2 * step + 1)
    estimate = estimate_llc(
        loss_fn, {**dict(module.named_parameters()), **dict(module.named_buffers())}, batches,
        num_chains=monitor.num_chains, num_draws=monitor.draws_count, step_size=monitor.step_size, n_beta=n_beta,
        localization=monitor.localization, generator=noise,
    )  # fmt: skip
    return estimate.llc


def test_the_logged_llc_is_estimate_llc_on_the_same_chains_and_seed(tmp_path):
    monitor = LocalLearningCoefficientMonitor(every_n_steps=6, **SMALL)
    weights = KeepWeights()
    logger = RecordingLogger()
    seed_everything(0)
    trainer = Trainer(max_steps=12, limit_val_batches=1, default_root_dir=tmp_path, callbacks=[monitor, weights],
                      **{**QUIET, "logger": logger})  # fmt: skip
    trainer.fit(task(), DigitsDataModule(batch_size=32))
    assert monitor.measured_steps == [0, 6, 12]
    n_beta = default_n_beta(monitor.train_size)
    data = DigitsDataModule()
    data.setup("fit")
    assert monitor.train_size == len(data.evaluation_dataset("train"))  # n of n / log n: the training split
    assert logger.series("llc/n_beta") == pytest.approx([n_beta] * 3)
    for position, step in enumerate((6, 12)):
        module = task()
        module.load_state_dict(weights.weights[step])
        assert monitor.history["llc/mean"][position + 1] == pytest.approx(
            rederived(monitor, module, step, n_beta), abs=1e-9
        )
    std = monitor.history["llc/std"][-1]
    assert monitor.history["llc/mean_se"][-1] == pytest.approx(std / math.sqrt(2))
    assert {"llc/mean", "llc/mean_se", "llc/init_loss", "llc/flagged", "llc/trace_rise"} <= logger.names()


def test_measuring_leaves_the_weights_and_the_training_rng_untouched(tmp_path):
    finals = []
    for callbacks in ([], [LocalLearningCoefficientMonitor(every_n_steps=3, **SMALL)]):
        seed_everything(0)
        module = task()
        trainer = Trainer(max_steps=9, limit_val_batches=1, default_root_dir=tmp_path, callbacks=callbacks, **QUIET)
        trainer.fit(module, DigitsDataModule(batch_size=32))
        finals.append(torch.cat([p.detach().flatten() for p in module.parameters()]))
    assert torch.equal(finals[0], finals[1])


def test_n_beta_is_the_dataset_the_batch_or_a_number_and_bad_values_are_named(tmp_path):
    batch = LocalLearningCoefficientMonitor(n_beta="batch", num_measurements=2, **SMALL)
    fit(tmp_path, batch, max_steps=2)
    assert batch.history["llc/n_beta"] == pytest.approx([16 / math.log(16)] * len(batch.measured_steps))
    fixed = LocalLearningCoefficientMonitor(n_beta=2.0, num_measurements=2, **SMALL)
    fit(tmp_path, fixed, max_steps=2)
    assert fixed.history["llc/n_beta"] == [2.0, 2.0]
    for bad in ("n", 0.0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="n_beta"):
            LocalLearningCoefficientMonitor(n_beta=bad)
    for name, value in (("num_chains", 1), ("num_draws", 0), ("num_burnin", -1), ("step_size", 0.0),
                        ("localization", -1.0), ("pool_size", 1), ("num_points", None)):  # fmt: skip
        with pytest.raises(ValueError, match=name):
            LocalLearningCoefficientMonitor(**{name: value})
    with pytest.raises(ValueError, match="behavioural"):
        LocalLearningCoefficientMonitor(loss=F.cross_entropy, behavioural=True)


def test_the_task_loss_is_used_a_user_loss_replaces_it_and_the_behavioural_llc_starts_at_zero_loss(tmp_path):
    grokking = GrokkingClassifier(MLP(in_features=64, num_classes=10, width=16, depth=2), 10)  # MSE on one-hot
    own = LocalLearningCoefficientMonitor(num_measurements=2, **SMALL)
    fit(tmp_path, own, module=grokking, max_steps=2)
    cross = LocalLearningCoefficientMonitor(num_measurements=2, loss=F.cross_entropy, **SMALL)
    fit(tmp_path, cross, module=GrokkingClassifier(MLP(in_features=64, num_classes=10, width=16, depth=2), 10),
        max_steps=2)  # fmt: skip
    # the same weights and minibatches: the MSE task's L(w*) is far below cross-entropy's log(10)-ish
    assert own.history["llc/init_loss"][0] < 0.5 < cross.history["llc/init_loss"][0]
    behavioural = LocalLearningCoefficientMonitor(num_measurements=2, behavioural=True, **SMALL)
    fit(tmp_path, behavioural, max_steps=2)
    assert behavioural.history["llc/init_loss"] == [0.0, 0.0]
    assert all(value >= 0 for value in behavioural.history["llc/mean"])  # a distance never below its start
    assert behavioural.state_key != own.state_key


class ObjectOutput(LightningModule):
    """A researcher's own module on (x, y) loaders, returning an object with ``.logits``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        self.frozen = torch.nn.Linear(10, 10)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return SimpleNamespace(logits=self.frozen(self.net(x)))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]).logits, batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.1)


def test_an_own_module_on_loaders_with_an_object_output_and_a_frozen_layer(tmp_path):
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(128, 1, 8, 8, generator=generator), torch.randint(0, 10, (128,), generator=generator)
    )
    monitor = LocalLearningCoefficientMonitor(num_measurements=2, **SMALL)
    module = ObjectOutput()
    frozen = module.frozen.weight.detach().clone()
    seed_everything(0)
    trainer = Trainer(max_steps=4, default_root_dir=tmp_path, callbacks=[monitor], **QUIET)
    trainer.fit(module, DataLoader(data, batch_size=16))
    assert monitor.train_size == 128 and monitor.points["pool"].shape == (64, 1, 8, 8)
    assert all(math.isfinite(value) for value in monitor.history["llc/mean"])
    assert torch.equal(module.frozen.weight, frozen)


def test_a_chain_that_left_w_star_is_named_and_a_non_finite_one_makes_the_mean_nan(tmp_path):
    settings = {**SMALL, "num_draws": 20, "num_measurements": 2}
    jumped = LocalLearningCoefficientMonitor(step_size=10.0, localization=0.0, **settings)
    with pytest.warns(UserWarning, match="above d/2 = 605"):  # finite, but far above what a coefficient can be
        fit(tmp_path, jumped, max_steps=2)
    assert jumped.history["llc/flagged"] == [2.0, 2.0]
    blown = LocalLearningCoefficientMonitor(step_size=1e6, localization=0.0, **settings)
    with pytest.warns(UserWarning, match="non-finite"):
        fit(tmp_path, blown, max_steps=2)
    assert math.isnan(blown.history["llc/mean"][0]) and blown.history["llc/flagged"][0] == 2.0


def test_auto_draws_fit_the_budget_and_the_state_round_trips(tmp_path):
    monitor = LocalLearningCoefficientMonitor(plot=False, pool_size=64)
    fit(tmp_path, monitor, max_steps=1000, batch=64)  # at batch 32 the floors (8 × 16 points × 4 × 10 draws) exceed 10%
    assert len(monitor.measured_steps) >= 8 and monitor.planned_overhead <= 0.1
    assert 10 <= monitor.draws_count < 100
    restored = LocalLearningCoefficientMonitor(plot=False, pool_size=64)
    restored.load_state_dict(monitor.state_dict())
    assert restored.draws_count == monitor.draws_count and restored.train_size == monitor.train_size
    assert torch.equal(restored.points["pool"], monitor.points["pool"]) and restored.history == monitor.history
    assert LocalLearningCoefficientMonitor(max_overhead=None, plot=False).cost_per_point() == 3 * 4 * 100 + 100


class SaveHistory(Callback):
    def __init__(self, root: str) -> None:
        self.root = root

    def on_train_end(self, trainer, pl_module):
        monitor = next(c for c in trainer.callbacks if isinstance(c, LocalLearningCoefficientMonitor))
        torch.save(monitor.history, Path(self.root) / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_two_ddp_ranks_log_the_single_process_values(tmp_path):
    histories = {}
    for name, batch, devices in (("single", 32, {"accelerator": "cpu", "devices": 1}), ("ddp", 16, DDP_SPAWN_CPU)):
        out = tmp_path / name
        out.mkdir()
        monitor = LocalLearningCoefficientMonitor(every_n_steps=4, **SMALL)
        seed_everything(0)
        callbacks = [monitor, SaveHistory(str(out))]
        trainer = Trainer(max_steps=8, limit_val_batches=1, default_root_dir=out, callbacks=callbacks,
                          **{**QUIET, **devices})  # fmt: skip
        trainer.fit(task(), DigitsDataModule(batch_size=batch))
        histories[name] = [torch.load(path, weights_only=True) for path in sorted(out.glob("rank*.pt"))]
    (single,), (rank0, rank1) = histories["single"], histories["ddp"]
    assert rank0.keys() == rank1.keys() == single.keys()
    for name, values in single.items():  # llc/trace_rise is NaN with these few draws: NaN must equal NaN
        assert rank0[name] == pytest.approx(rank1[name], rel=0, abs=0, nan_ok=True), name
        assert rank0[name] == pytest.approx(values, rel=1e-4, abs=1e-5, nan_ok=True), name
