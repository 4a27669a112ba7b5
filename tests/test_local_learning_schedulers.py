"""LR schedulers under local learning's manual optimization: Lightning's configuration, stepped as Lightning would."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.models import MLP
from lightning_regs.tasks.local_learning_classifier import LocalLearningClassifier
from tests.helpers.ddp import spawn_ddp
from tests.helpers.trainers import QUIET, CrashAtEpoch

LR = 0.1


def halve_each_step(step: int) -> float:
    return 0.5**step


class ScheduledClassifier(LocalLearningClassifier):
    """A local-learning classifier whose ``configure_optimizers`` returns one of the test schedules."""

    def __init__(self, schedule: str, monitor: str = "val/loss", strict: bool = True) -> None:
        super().__init__(
            MLP(in_features=64, num_classes=10, width=32, depth=3), 10, K=2, split=[0], input_shape=(1, 8, 8)
        )
        self.schedule, self.monitor, self.strict = schedule, monitor, strict

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)
        if self.schedule in ("step", "step-every-2"):
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, halve_each_step)
            config = {"scheduler": scheduler, "interval": "step", "frequency": 2 if self.schedule != "step" else 1}
        elif self.schedule == "epoch":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
            config = {"scheduler": scheduler, "interval": "epoch", "frequency": 2}
        else:
            # An absolute threshold no loss change can meet: the first update sets `best`, every later one reduces.
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=0.5, patience=0, threshold=1e6, threshold_mode="abs"
            )
            config = {"scheduler": scheduler, "monitor": self.monitor, "strict": self.strict}
            if self.schedule == "plateau-per-step":  # after each step's logging, on that step's train/loss
                config.update(interval="step", monitor="train/loss")
        return {"optimizer": optimizer, "lr_scheduler": config}


class RecordLR(Callback):
    """The learning rate each optimizer step uses, and the validation loss of each epoch."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.val_losses: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])

    def on_validation_end(self, trainer, pl_module):
        self.val_losses.append(float(trainer.callback_metrics["val/loss"]))


# Where the resume checkpoint is written: ModelCheckpoint arguments (all with save_last=True).
SAVED_AT = {
    "epoch-end": {},  # on_train_epoch_end, after the module's epoch-end hook (the default here)
    "validation-end": {"save_on_train_epoch_end": False},  # before the epoch-end hooks, which the resume replays
    "last-batch": {"every_n_train_steps": 3},  # on_train_batch_end of the last batch, before validation
}


def fit(
    tmp_path: Path,
    schedule: str,
    epochs: int,
    callbacks=(),
    ckpt_path=None,
    saved_at: str = "epoch-end",
    **task_kwargs,
) -> tuple[ScheduledClassifier, Trainer, RecordLR]:
    seed_everything(0)
    task = ScheduledClassifier(schedule, **task_kwargs)
    record = RecordLR()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, **SAVED_AT[saved_at])
    trainer = Trainer(
        max_epochs=epochs,
        limit_train_batches=3,
        limit_val_batches=1,
        default_root_dir=tmp_path,
        callbacks=[record, checkpoint, *callbacks],
        **{**QUIET, "enable_checkpointing": True},
    )
    trainer.fit(task, DigitsDataModule(batch_size=32), ckpt_path=ckpt_path)
    return task, trainer, record


def expected_lrs(schedule: str, epochs: int) -> list[float]:
    if schedule == "step":  # once per optimizer step, across epoch boundaries
        return [LR * 0.5**step for step in range(3 * epochs)]
    if schedule == "step-every-2":  # after every second optimizer step (counted over the run, not per epoch)
        return [LR * 0.5 ** (step // 2) for step in range(3 * epochs)]
    if schedule == "epoch":  # StepLR(gamma=0.1) stepped after every second epoch
        return [LR * 0.1 ** (epoch // 2) for epoch in range(epochs) for _ in range(3)]
    if schedule == "plateau-per-step":  # kept after step 0 (sets `best`), halved after every later step
        return [LR * 0.5 ** max(step - 1, 0) for step in range(3 * epochs)]
    # ReduceLROnPlateau: kept after epoch 0 (sets `best`), halved after every later epoch
    return [LR * 0.5 ** max(epoch - 1, 0) for epoch in range(epochs) for _ in range(3)]


@pytest.mark.filterwarnings("error:The lr scheduler dict contains:RuntimeWarning")  # no "keys ignored" warning
@pytest.mark.parametrize("schedule", ["step", "step-every-2", "epoch", "plateau", "plateau-per-step"])
def test_learning_rates_per_step_follow_the_configured_interval_and_frequency(tmp_path, schedule):
    _, trainer, record = fit(tmp_path, schedule, epochs=4)
    assert trainer.global_step == 12
    torch.testing.assert_close(record.lrs, expected_lrs(schedule, 4), rtol=1e-12, atol=0)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    if schedule.startswith("step"):
        assert scheduler.last_epoch == (12 if schedule == "step" else 6)
    elif schedule == "epoch":
        assert scheduler.last_epoch == 2
    elif schedule == "plateau":  # the monitored value reached the scheduler: its best is epoch 0's val/loss
        assert len(record.val_losses) == 4
        assert scheduler.best == pytest.approx(record.val_losses[0], rel=1e-6)


@pytest.mark.parametrize(
    ("schedule", "saved_at"),
    [
        ("step", "epoch-end"),
        ("epoch", "epoch-end"),
        ("plateau", "epoch-end"),
        ("epoch", "validation-end"),
        ("plateau", "validation-end"),
        ("step", "last-batch"),
        ("epoch", "last-batch"),
    ],
)
def test_scheduler_state_survives_a_resume_exactly(tmp_path, schedule, saved_at):
    # Epoch schedulers step after the last batch's optimizer step, before validation, as under automatic
    # optimization, so every checkpoint of the epoch holds the update; the plateau update at the epoch's end reads
    # val/loss, which a checkpoint written at validation end carries for the replayed epoch end.
    # (ReduceLROnPlateau cannot resume exactly from "last-batch": that epoch's validation never ran, as in Lightning.)
    kwargs = {"schedule": schedule, "epochs": 4, "saved_at": saved_at}
    _, full, full_record = fit(tmp_path / "full", **kwargs)
    with pytest.raises(RuntimeError, match="CRASH"):
        fit(tmp_path / "cut", callbacks=[CrashAtEpoch(2)], **kwargs)
    _, resumed, resumed_record = fit(tmp_path / "cut", ckpt_path=tmp_path / "cut" / "last.ckpt", **kwargs)
    assert resumed_record.lrs == full_record.lrs[6:]
    expected = full.lr_scheduler_configs[0].scheduler.state_dict()
    got = resumed.lr_scheduler_configs[0].scheduler.state_dict()
    expected.pop("lr_lambdas", None), got.pop("lr_lambdas", None)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key


class SaveLR(RecordLR):
    """Writes each rank's learning rates at the end (ddp_spawn runs the callback in the workers)."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        torch.save(self.lrs, Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


def test_plateau_schedule_under_ddp_steps_alike_on_every_rank(tmp_path):
    seed_everything(0)
    trainer = Trainer(
        max_epochs=3,
        limit_train_batches=3,
        limit_val_batches=1,
        default_root_dir=tmp_path,
        callbacks=[SaveLR(str(tmp_path))],
        accelerator="cpu",
        devices=2,
        strategy=spawn_ddp(find_unused_parameters=True),
        **QUIET,
    )
    trainer.fit(ScheduledClassifier("plateau"), DigitsDataModule(batch_size=16))
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt") == expected_lrs("plateau", 3)


class BarePlateau(ScheduledClassifier):
    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=LR)
        return [optimizer], [torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)]


class PlateauInTupleForm(ScheduledClassifier):
    """The ``([optimizers], [scheduler dicts])`` form, through a super() call of the parent's wrapped method."""

    def configure_optimizers(self):
        conf = super().configure_optimizers()
        return [conf["optimizer"]], [conf["lr_scheduler"]]


def test_a_plateau_scheduler_without_monitor_is_named(tmp_path):
    trainer = Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, default_root_dir=tmp_path, **QUIET)
    with pytest.raises(MisconfigurationException, match="needs a metric to monitor"):
        trainer.fit(BarePlateau("plateau"), DigitsDataModule(batch_size=32))


def test_plateau_keys_are_kept_in_the_tuple_form_and_through_super(tmp_path):
    seed_everything(0)
    task = PlateauInTupleForm("plateau")
    trainer = Trainer(max_epochs=3, limit_train_batches=1, limit_val_batches=1, default_root_dir=tmp_path, **QUIET)
    trainer.fit(task, DigitsDataModule(batch_size=32))
    (config,) = trainer.lr_scheduler_configs
    assert (config.reduce_on_plateau, config.monitor, config.strict) == (True, "val/loss", True)
    assert trainer.optimizers[0].param_groups[0]["lr"] == LR * 0.5**2  # reduced after epochs 1 and 2


def test_a_plateau_monitor_that_was_never_logged_is_named_with_the_logged_ones(tmp_path):
    with pytest.raises(MisconfigurationException, match=r"'val/nope'.*'val/loss'"):
        fit(tmp_path, "plateau", epochs=1, monitor="val/nope")


def test_a_non_strict_plateau_monitor_that_is_missing_warns_and_keeps_the_rate(tmp_path):
    with pytest.warns(RuntimeWarning, match="strict=False"):
        _, _, record = fit(tmp_path, "plateau", epochs=2, monitor="val/nope", strict=False)
    assert record.lrs == [LR] * 6


class StepPlateauOnValidation(ScheduledClassifier):
    """A step-interval ReduceLROnPlateau watching a validation metric, validated every 2 steps."""

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=0, threshold=1e6, threshold_mode="abs"
        )
        config = {"scheduler": scheduler, "interval": "step", "frequency": 2, "monitor": "val/loss"}
        return {"optimizer": optimizer, "lr_scheduler": config}


def test_a_step_plateau_on_a_validation_metric_updates_after_that_validation(tmp_path):
    seed_everything(0)
    task = StepPlateauOnValidation("plateau")
    record = RecordLR()
    trainer = Trainer(max_epochs=1, limit_train_batches=6, limit_val_batches=1, val_check_interval=2,
                      default_root_dir=tmp_path, callbacks=[record], **QUIET)  # fmt: skip
    trainer.fit(task, DigitsDataModule(batch_size=32))
    # Validations after steps 2, 4, 6; updates at steps 2 (sets `best`), 4 and 6 (each halves): the LR of the
    # steps that follow them. Stepping before the validation would raise: val/loss not logged yet at step 2.
    assert record.lrs == pytest.approx([LR, LR, LR, LR, LR / 2, LR / 2])
    assert len(record.val_losses) == 3
