"""The mean-image floor refuses to score against a mean image it never computed (no fit, no checkpoint)."""

from __future__ import annotations

import pytest
from lightning.pytorch import Trainer

from lightning_regs.datamodules import MVTecADDataModule
from lightning_regs.tasks import MeanImageAnomalyBaseline
from tests.helpers.fake_datasets_medical import make_mvtec
from tests.helpers.trainers import QUIET

RAW = {"image_size": None, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


@pytest.mark.fault(area="tasks", outcome="refused")
@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_evaluating_the_floor_without_a_fit_is_a_named_error(tmp_path, stage) -> None:
    datamodule = MVTecADDataModule(make_mvtec(tmp_path / "mvtec"), "bottle", batch_size=2, **RAW)
    trainer = Trainer(default_root_dir=tmp_path, **QUIET)
    with pytest.raises(ValueError, match=rf"no mean image to {stage} against: nothing was fitted\. Run fit first"):
        getattr(trainer, stage)(MeanImageAnomalyBaseline(), datamodule)


@pytest.mark.fault(area="tasks", outcome="handled")
def test_a_fit_then_test_scores_against_the_fitted_mean(tmp_path) -> None:
    datamodule = MVTecADDataModule(make_mvtec(tmp_path / "mvtec"), "bottle", batch_size=2, **RAW)
    task = MeanImageAnomalyBaseline()
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=1, **QUIET)
    trainer.fit(task, datamodule)
    trainer.test(task, datamodule, verbose=False)
    assert (
        task.mean_image.numel() > 0 and trainer.callback_metrics["test/num_images"] == 2 + 2 * 2
    )  # good + 2 defect types
