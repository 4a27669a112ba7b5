"""ScheduledMonitor: epoch and step schedules, loaders without a DataModule, should_measure, cost bound, overhead."""

from __future__ import annotations

import re

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_regs.callbacks import AdversarialRobustnessMonitor, LocalComplexityMonitor
from lightning_regs.callbacks import scheduled_monitor as scheduled_monitor_module
from lightning_regs.callbacks.monitor_schedule import auto_size, measurement_epochs
from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.models import MLP
from lightning_regs.tasks import ImageClassifier
from tests.helpers.loggers import RecordingLogger
from tests.helpers.monitors import StepCounter
from tests.helpers.trainers import QUIET


class EveryThirdStep(StepCounter):
    def should_measure(self, trainer, epoch_end):
        return not epoch_end and trainer.global_step % 3 == 0


def task() -> ImageClassifier:
    return ImageClassifier(MLP(in_features=64, num_classes=10, width=16, depth=2), 10, scheduler="constant")


def fit(tmp_path, monitor, max_epochs=3, logger=None, callbacks_extra=(), **kwargs) -> Trainer:
    trainer = Trainer(
        max_epochs=max_epochs,
        limit_train_batches=4,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=[monitor, *callbacks_extra],
        **{**QUIET, "logger": logger or False},
        **kwargs,
    )
    trainer.fit(task(), DigitsDataModule(batch_size=32))
    return trainer


def test_epoch_schedule_measures_before_training_and_after_every_nth_epoch(tmp_path):
    monitor = StepCounter(every_n_epochs=2, max_overhead=None, plot=False, prefix="count")
    fit(tmp_path, monitor, max_epochs=5)
    assert measurement_epochs(5, 2) == [0, 2, 4, 5]
    assert monitor.measured_steps == [0, 8, 16, 20]  # 4 steps per epoch
    assert monitor.history["count/step"] == [0.0, 8.0, 16.0, 20.0]


def test_should_measure_can_be_overridden(tmp_path):
    monitor = EveryThirdStep(max_overhead=None, plot=False)
    fit(tmp_path, monitor, max_epochs=2)
    assert monitor.measured_steps == [0, 3, 6]


def test_overhead_is_logged_with_the_prefix_and_printed(tmp_path, caplog):
    logger = RecordingLogger()
    monitor = StepCounter(every_n_steps=2, max_overhead=None, plot=False, prefix="mine")
    with caplog.at_level("INFO"):
        fit(tmp_path, monitor, logger=logger)
    overhead = logger.series("mine/overhead")
    assert len(overhead) == len(monitor.measured_steps) == 7 and 0 < overhead[-1] < 10
    assert re.search(
        r"StepCounter: 7 measurements, planned [\d.]+% of the forward passes; [\d.]+ s measuring = [\d.]+% of "
        r"[\d.]+ s training",
        caplog.text,
    )


class SlowTraining(Callback):
    """Each training step costs 100 ticks of the fake clock."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        for _ in range(100):
            scheduled_monitor_module.time.perf_counter()


class Costly(StepCounter):
    def measure(self, trainer, pl_module):
        for _ in range(300):  # each measurement costs 300 ticks of the fake clock
            scheduled_monitor_module.time.perf_counter()
        return super().measure(trainer, pl_module)


def test_the_opt_in_wall_clock_guard_skips_measurements_beyond_its_share_of_seconds(tmp_path, monkeypatch):
    clock = iter(range(10**7))
    monkeypatch.setattr(scheduled_monitor_module.time, "perf_counter", lambda: float(next(clock)))
    monitor = Costly(every_n_steps=1, max_overhead=None, wall_clock_overhead=0.5, plot=False)
    trainer = Trainer(max_epochs=3, limit_train_batches=4, limit_val_batches=0, default_root_dir=tmp_path,
                      callbacks=[SlowTraining(), monitor], **QUIET)  # fmt: skip
    trainer.fit(task(), DigitsDataModule(batch_size=32))
    assert monitor.measured_steps[0] == 0 and monitor.skipped_steps
    assert sorted(monitor.measured_steps + monitor.skipped_steps) == list(range(13))
    assert 2 <= len(monitor.measured_steps) <= 6  # about one step in 6 is affordable at 300 / (0.5 × 100)
    unbounded = StepCounter(every_n_steps=1, max_overhead=None, plot=False)
    fit(tmp_path, unbounded)
    assert unbounded.measured_steps == list(range(13)) and not unbounded.skipped_steps
    counted = Costly(every_n_steps=1, plot=False)  # the default: a budget in counted work, the clock ignored
    trainer = Trainer(max_epochs=3, limit_train_batches=4, limit_val_batches=0, default_root_dir=tmp_path,
                      callbacks=[SlowTraining(), counted], **QUIET)  # fmt: skip
    trainer.fit(task(), DigitsDataModule(batch_size=32))
    assert counted.measured_steps == list(range(13)) and not counted.skipped_steps
    with pytest.raises(ValueError, match="wall_clock_overhead"):
        StepCounter(wall_clock_overhead=0.0)


def test_auto_size_keeps_what_the_user_set_and_fits_the_rest_into_the_budget():
    assert auto_size(1e12, 10.0, None, None) == (1024, 50)
    points, measurements = auto_size(1e5, 10.0, None, None)
    assert 64 <= points <= 1024 and points * measurements * 10.0 <= 1e5
    assert auto_size(1e5, 10.0, 500, None) == (500, 20)
    assert auto_size(1e5, 10.0, None, 4) == (1024, 4)
    assert auto_size(10.0, 10.0, None, None) == (16, 8)  # the floors, above the budget: the monitor warns
    assert auto_size(19_200, 51.0, None, None) == (47, 8)  # 8 measurements first: points go below 64 for them
    assert auto_size(10.0, 10.0, 64, None) == (64, 2)  # the user's points: measurements go down to 2


def test_default_monitors_size_themselves_from_the_run(tmp_path):
    small = LocalComplexityMonitor(num_directions=4, plot=False)  # 12 steps of 32: 115 forwards of budget
    with pytest.warns(UserWarning, match="above max_overhead=0.1"):
        fit(tmp_path, small)
    assert small.points_per_set == 16 and small.points["train"].shape[0] == 16
    assert small.steps == [0, 1, 2, 3, 5, 8, 12]  # the floors: 8 log-spaced steps (7 distinct in a 12-step run)
    large = LocalComplexityMonitor(num_directions=4, plot=False, max_overhead=5000.0)  # 57.6M forwards
    fit(tmp_path, large)
    assert large.points_per_set == 1024 and len(large.steps) > 2
    assert large.points_per_set * len(large.steps) * large.cost_per_point() <= 5000.0 * 3 * 12 * 32


def test_the_plan_covers_the_run_that_happens_when_max_epochs_ends_it_first(tmp_path):
    monitor = StepCounter(num_measurements=5, max_overhead=None, plot=False)
    fit(tmp_path, monitor, max_epochs=2, max_steps=1000)
    assert monitor.steps[-1] == 8 and monitor.measured_steps[-1] == 8


def test_gradient_accumulation_asks_once_per_optimizer_step(tmp_path, monkeypatch):
    monitor = StepCounter(every_n_steps=1, max_overhead=None, plot=False)
    fit(tmp_path, monitor, max_epochs=2, accumulate_grad_batches=2)
    assert monitor.measured_steps == [0, 1, 2, 3, 4]
    clock = iter(range(10**7))
    monkeypatch.setattr(scheduled_monitor_module.time, "perf_counter", lambda: float(next(clock)))
    costly = Costly(every_n_steps=1, wall_clock_overhead=0.5, plot=False)
    fit(tmp_path, costly, max_epochs=2, accumulate_grad_batches=2)
    assert sorted(costly.measured_steps + costly.skipped_steps) == [0, 1, 2, 3, 4]


class NoisyImages(Dataset):
    """Digits-like samples with a random augmentation drawn from the global RNG, as torchvision's are."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images, self.labels = torch.randn(64, 1, 8, 8, generator=generator), torch.arange(64) % 10

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index] + 0.1 * torch.randn(1, 8, 8), self.labels[index]


def test_drawing_the_points_leaves_the_global_rng_and_so_the_training_untouched(tmp_path):
    weights = []
    for callbacks in ([], [LocalComplexityMonitor(num_directions=2, num_points=16, max_overhead=None, plot=False,
                                                  sets=("train",))]):  # fmt: skip
        seed_everything(0)
        model = task()
        trainer = Trainer(max_steps=4, default_root_dir=tmp_path, callbacks=callbacks, **QUIET)
        trainer.fit(model, DataLoader(NoisyImages(), batch_size=16, shuffle=True))
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_an_epoch_measurement_is_in_the_checkpoint_written_at_validation_end(tmp_path):
    monitor = StepCounter(every_n_epochs=1, max_overhead=None, plot=False)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_on_train_epoch_end=False, save_top_k=-1)
    trainer = Trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=1, default_root_dir=tmp_path,
                      callbacks=[monitor, checkpoint], **{**QUIET, "enable_checkpointing": True})  # fmt: skip
    trainer.fit(task(), DigitsDataModule(batch_size=32))
    first = torch.load(tmp_path / "epoch=0-step=4.ckpt", weights_only=True)
    assert first["callbacks"][monitor.state_key]["measured_steps"] == [0, 4]


def test_two_monitors_of_one_class_keep_their_own_state(tmp_path):
    on_val = AdversarialRobustnessMonitor(steps=1, num_points=8, num_measurements=2, max_overhead=None, plot=False)
    on_test = AdversarialRobustnessMonitor(steps=1, num_points=8, num_measurements=2, max_overhead=None, plot=False,
                                           heldout_split="test", prefix="robust_test")  # fmt: skip
    assert on_val.state_key != on_test.state_key
    fit(tmp_path, on_val, max_epochs=1, callbacks_extra=[on_test])
    assert "robust_test/acc" in on_test.history and "robust/acc" in on_val.history


def test_points_come_from_the_loaders_given_to_fit_when_there_is_no_datamodule(tmp_path):
    images, labels = torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,))
    held_out = TensorDataset(torch.randn(24, 1, 8, 8), torch.randint(0, 10, (24,)))
    lc = LocalComplexityMonitor(num_directions=3, num_points=None, num_measurements=2, max_overhead=None, plot=False)
    robust = AdversarialRobustnessMonitor(steps=2, num_points=None, num_measurements=2, max_overhead=None, plot=False)
    trainer = Trainer(max_steps=2, default_root_dir=tmp_path, callbacks=[lc, robust], **QUIET)
    trainer.fit(task(), DataLoader(TensorDataset(images, labels), batch_size=8), DataLoader(held_out, batch_size=8))
    assert torch.equal(lc.points["train"], images) and torch.equal(lc.points["heldout"], held_out.tensors[0])
    assert torch.equal(robust.points["targets"], held_out.tensors[1])
    assert {"lc/train", "lc/heldout", "robust/acc"} <= set(trainer.callback_metrics)


def test_no_heldout_loader_is_a_named_error(tmp_path):
    loader = DataLoader(TensorDataset(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))), batch_size=4)
    monitor = LocalComplexityMonitor(num_directions=2, num_points=4, max_overhead=None, plot=False)
    trainer = Trainer(max_steps=1, default_root_dir=tmp_path, callbacks=[monitor], **QUIET)
    with pytest.raises(RuntimeError, match="pass val_dataloaders to fit"):
        trainer.fit(task(), loader)


def test_submodule_is_measured_and_a_wrong_one_is_named(tmp_path):
    monitor = LocalComplexityMonitor(num_directions=2, num_points=8, num_measurements=2, submodule="backbone",
                                     max_overhead=None, plot=False)  # fmt: skip
    fit(tmp_path, monitor, max_epochs=1)
    assert monitor.history["lc/train"][-1] > 0
    wrong = LocalComplexityMonitor(num_directions=2, num_points=8, submodule="net", max_overhead=None, plot=False)
    children = r"\['backbone', 'metrics', 'loss_terms'\]"
    with pytest.raises(ValueError, match=rf"no such submodule; its children are {children}"):
        fit(tmp_path, wrong, max_epochs=1)


def test_the_held_out_set_has_one_name():
    with pytest.raises(ValueError, match=r"\['test'\] are not sets"):
        LocalComplexityMonitor(num_directions=2, sets=("train", "test"))
    monitor = LocalComplexityMonitor(num_directions=2, sets=("train", "heldout"))
    monitor.set_points(train=torch.zeros(2, 1, 2, 2), heldout=torch.ones(2, 1, 2, 2))
    assert torch.equal(monitor.points["heldout"], torch.ones(2, 1, 2, 2))
    robust = AdversarialRobustnessMonitor()
    with pytest.raises(TypeError):
        robust.set_points(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 2]))  # keyword only: heldout=(images, targets)
    robust.set_points(heldout=(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 2])))
    assert robust.points["targets"].tolist() == [0, 1, 2]


def test_bad_schedules_are_named():
    with pytest.raises(ValueError, match="Give one schedule"):
        StepCounter(num_measurements=5, every_n_epochs=1)
    with pytest.raises(ValueError, match="every_n_epochs"):
        StepCounter(every_n_epochs=0)
    with pytest.raises(ValueError, match="num_points"):
        StepCounter(num_points=0)
    with pytest.raises(ValueError, match="max_overhead"):
        StepCounter(max_overhead=0.0)


def test_training_points_are_clean_images_not_augmented_views(tmp_path):
    from lightning_regs.callbacks.monitor_points import draw_from_dataset
    from lightning_regs.datamodules import CIFAR10DataModule
    from lightning_regs.models import resnet20
    from tests.helpers.fake_datasets_vision import write_cifar

    write_cifar(tmp_path, train_per_batch=4)
    dm = CIFAR10DataModule(root=tmp_path, batch_size=4, download=False)
    dm.setup("fit")
    view = dm.evaluation_dataset("train")
    assert view.transform is dm.eval_transform and dm.datasets["train"].transform is dm.train_transform
    augmented = torch.stack([dm.datasets["train"][i]["image"] for i in range(8)])
    assert not torch.equal(augmented, torch.stack([view[i]["image"] for i in range(8)]))  # crops and flips
    monitor = LocalComplexityMonitor(num_directions=2, num_points=8, num_measurements=2, max_overhead=None,
                                     plot=False, sets=("train",))  # fmt: skip
    model = ImageClassifier(resnet20(), 10, scheduler="constant")
    trainer = Trainer(max_steps=1, limit_val_batches=0, default_root_dir=tmp_path, callbacks=[monitor], **QUIET)
    trainer.fit(model, dm)
    expected, _ = draw_from_dataset(view, 8, monitor.generator(1))
    assert torch.equal(monitor.points["train"], expected)


def test_a_heldout_split_typo_is_refused_at_construction() -> None:
    from lightning_regs.callbacks import LocalComplexityMonitor

    with pytest.raises(ValueError, match=r"heldout_split must be 'val' or 'test'.*got 'vall'"):
        LocalComplexityMonitor(heldout_split="vall")


def test_an_empty_heldout_split_is_a_named_error_before_training() -> None:
    import torch
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_regs.callbacks import LocalComplexityMonitor
    from lightning_regs.datamodules import IndexedDataset
    from lightning_regs.models import MLP
    from lightning_regs.tasks import ImageClassifier

    def loader(n: int) -> DataLoader:
        return DataLoader(IndexedDataset(TensorDataset(torch.randn(n, 64), torch.arange(n) % 10)), batch_size=8)

    monitor = LocalComplexityMonitor(num_points=4, num_directions=2, num_measurements=2, plot=False)
    task = ImageClassifier(MLP(in_features=64, num_classes=10, width=8, depth=2), 10)
    trainer = Trainer(
        max_steps=2, callbacks=[monitor], logger=False, enable_progress_bar=False, enable_checkpointing=False
    )
    with pytest.raises(ValueError, match="drawn from an empty data set; give it a split that has samples"):
        trainer.fit(task, loader(32), loader(0))
    assert trainer.global_step == 0
