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
