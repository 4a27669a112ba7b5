"""``AnomalyPredictionWriter``: ``lightning-regs predict`` leaves every image's map and score in a file, for the
tasks that score per batch (INP-Former, through the example config) and for MuSc, which scores at the epoch's end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer

from lightning_regs.callbacks import AnomalyPredictionWriter
from lightning_regs.cli import LightningRegsCLI
from lightning_regs.datamodules.mvtec_toy import MVTecToyDataModule
from lightning_regs.tasks.musc import MuScZeroShot
from tests.helpers.trainers import QUIET

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMALL = {"num_train": 2, "num_test_good": 4, "num_test_defect": 1, "batch_size": 3}  # 7 test images


def test_predict_from_the_inp_former_example_writes_every_test_image(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["predict", f"--config={EXAMPLES / 'inp_former_mvtec_toy.yaml'}", "--trainer.logger=false",
            "--model.init_args.encoder_weights=null", "--model.init_args.num_decoder_blocks=2",
            *[f"--data.init_args.{key}={value}" for key, value in SMALL.items()]]  # fmt: skip
    cli = LightningRegsCLI(args=args)
    writers = [c for c in cli.trainer.callbacks if isinstance(c, AnomalyPredictionWriter)]
    assert len(writers) == 1, "the example config lists the writer, so predict writes its maps"
    rows = torch.load(tmp_path / "runs" / "inp_former_mvtec_toy" / "predictions_rank0.pt")
    assert rows["index"].tolist() == list(range(7))
    assert rows["score"].shape == (7,) and rows["anomaly_map"].shape == (7, 1, 64, 64)
    maps, scores = cli.model.anomaly_scores(next(iter(cli.datamodule.predict_dataloader()))["image"])
    torch.testing.assert_close(rows["anomaly_map"][:3], maps.cpu())
    torch.testing.assert_close(rows["score"][:3], scores.cpu())


def test_musc_predictions_made_at_the_epochs_end_are_written(tmp_path):
    task = MuScZeroShot(layers=[2, 3], degrees=[1, 3])
    trainer = Trainer(default_root_dir=tmp_path, accelerator="cpu", callbacks=[AnomalyPredictionWriter()], **QUIET)
    trainer.predict(task, datamodule=MVTecToyDataModule(tmp_path / "data", **SMALL), return_predictions=False)
    rows = torch.load(tmp_path / "predictions_rank0.pt")
    assert rows.keys() == task.predictions.keys() and rows["anomaly_map"].shape == (7, 1, 64, 64)
    for key, value in task.predictions.items():
        assert torch.equal(rows[key], value), key


class _NoMaps(LightningModule):
    def forward(self, x):
        return x

    def predict_step(self, batch, batch_idx):
        return batch


def test_a_module_without_anomaly_predictions_is_a_named_error(tmp_path):
    trainer = Trainer(default_root_dir=tmp_path, accelerator="cpu", callbacks=[AnomalyPredictionWriter()], **QUIET)
    with pytest.raises(RuntimeError, match="left no anomaly predictions"):
        trainer.predict(_NoMaps(), torch.utils.data.DataLoader(torch.zeros(2, 3)), return_predictions=False)
