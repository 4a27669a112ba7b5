from pathlib import Path

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger

from lightning_regs.cli import LightningRegsCLI
from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.models import SmallCNN
from lightning_regs.tasks import ImageClassifier
from tests.helpers.trainers import QUIET

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"


def test_metrics_reach_wandb_under_their_documented_names(tmp_path, wandb_mock):
    logger = WandbLogger(project="lightning-regs-test", save_dir=str(tmp_path))
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        log_every_n_steps=1,
        default_root_dir=tmp_path,
        **{**QUIET, "logger": logger},
    )
    trainer.fit(ImageClassifier(SmallCNN(width=8), 10), DigitsDataModule())
    sent = {name for call in wandb_mock.run_mock.log.call_args_list for name in call.args[0]}
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/ece", "trainer/global_step"} <= sent
    config = wandb_mock.run_mock.config.update.call_args.args[0]
    assert config["num_classes"] == 10 and config["ece_bins"] == 15


def test_the_readme_offline_command_writes_an_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setattr("sys.argv", ["lightning-regs"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    LightningRegsCLI(
        args=[
            "fit",
            "--config",
            str(QUICKSTART),
            "--trainer.logger=lightning.pytorch.loggers.WandbLogger",
            "--trainer.logger.offline=true",
            f"--trainer.logger.save_dir={tmp_path}",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
        ]
    )
    import wandb

    wandb.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
