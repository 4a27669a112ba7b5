import re

from lightning.pytorch import Trainer

from lightning_regs.callbacks import MetricsSummary
from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.models import SmallCNN
from lightning_regs.tasks import ImageClassifier
from tests.helpers.trainers import QUIET


def test_prints_the_final_metrics_after_fit_and_test(tmp_path, capsys):
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        default_root_dir=tmp_path,
        callbacks=[MetricsSummary(prefixes=("val/", "test/"))],
        **QUIET,
    )
    task = ImageClassifier(SmallCNN(width=8), 10)
    trainer.fit(task, DigitsDataModule())
    val_acc = float(trainer.callback_metrics["val/acc"])
    trainer.test(task, DigitsDataModule(), verbose=False)
    out = capsys.readouterr().out
    assert "fit finished in" in out and "steps: 2" in out
    assert "val/acc" in out and "test/ece" in out and "train/loss" not in out
    assert re.search(rf"val/acc\s+{val_acc:.4f}\n", out)


def test_a_monitor_metric_measured_before_the_end_says_at_which_step(tmp_path, capsys):
    from lightning_regs.callbacks import LocalComplexityMonitor

    class FirstStepOnly(LocalComplexityMonitor):
        def should_measure(self, trainer, epoch_end):  # as when max_overhead skipped every later measurement
            return trainer.global_step == 0

    monitors = [
        FirstStepOnly(
            radius=0.5, num_directions=2, num_points=4, every_n_epochs=1, prefix="early", plot=False, max_overhead=None
        ),
        LocalComplexityMonitor(
            radius=0.5, num_directions=2, num_points=4, every_n_epochs=1, prefix="lc", plot=False, max_overhead=None
        ),
    ]
    trainer = Trainer(
        max_epochs=2, limit_train_batches=2, limit_val_batches=1, default_root_dir=tmp_path,
        callbacks=[*monitors, MetricsSummary()], **QUIET,
    )  # fmt: skip
    trainer.fit(ImageClassifier(SmallCNN(width=8), 10), DigitsDataModule())
    out = capsys.readouterr().out
    assert monitors[0].measured_steps == [0] and monitors[1].measured_steps == [0, 2, 4]
    assert re.search(r"early/train\s+[0-9.]+  \(measured at step 0, not at the end\)\n", out)
    assert re.search(r"lc/train\s+[0-9.]+\n", out)  # measured at the last step: no note
