"""Checks that need a GPU: skipped on CPU-only machines (CI), run where one is lent."""

import torch
from lightning.pytorch import Trainer

from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.models import resnet20
from lightning_regs.tasks import ImageClassifier
from tests.helpers.runif import requires_cuda
from tests.helpers.trainers import QUIET


@requires_cuda()
def test_mixed_precision_fit_on_gpu_keeps_metrics_finite(tmp_path):
    task = ImageClassifier(resnet20(num_classes=10), num_classes=10, lr=0.05)
    trainer = Trainer(
        accelerator="gpu",
        devices=1,
        precision="16-mixed",
        max_epochs=1,
        default_root_dir=tmp_path,
        limit_train_batches=5,
        limit_val_batches=2,
        **QUIET,
    )
    trainer.fit(task, DigitsDataModule(image_size=32, channels=3))
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    assert 0.0 <= float(trainer.callback_metrics["val/ece"]) <= 1.0
