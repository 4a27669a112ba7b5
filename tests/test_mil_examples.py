"""The AEM examples run as written: the digits-bags config, the feature-bags config on a generated slide folder."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

from lightning_regs.cli import LightningRegsCLI
from lightning_regs.datamodules import DigitsBagsDataModule, FeatureBagDataModule
from lightning_regs.tasks import AttentionEntropyTerm, MILClassifier

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SHORT = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(autouse=True)
def _argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-regs"])


def test_the_digits_bags_example_trains_abmil_with_aem(tmp_path, capsys):
    cli = LightningRegsCLI(
        args=["fit", "--config", str(EXAMPLES / "aem_digits_bags.yaml"), "--trainer.max_epochs=1",
              "--trainer.limit_train_batches=30", f"--trainer.default_root_dir={tmp_path}", *SHORT],
    )  # fmt: skip
    assert isinstance(cli.model, MILClassifier) and isinstance(cli.datamodule, DigitsBagsDataModule)
    (term,) = cli.model.loss_terms.values()
    assert isinstance(term, AttentionEntropyTerm) and term.weight == 0.1
    assert cli.trainer.global_step == 30 and cli.datamodule.batch_size == 1
    printed = capsys.readouterr().out  # MetricsSummary
    for name in ("train/aem", "val/auroc", "val/attention_entropy", "val/instance_auroc"):
        assert name in printed


@pytest.mark.parametrize(
    ("override", "weight"),
    [
        ([], 0.1),
        (["--model.init_args.loss_terms=[]"], None),
        (["--model.init_args.loss_terms.init_args.weight=0.3"], 0.3),
    ],
)
def test_the_cards_cli_lines_set_lambda(override, weight):
    cli = LightningRegsCLI(args=["--config", str(EXAMPLES / "aem_digits_bags.yaml"), *override], run=False)
    weights = [term.weight for term in cli.model.loss_terms.values()]
    assert weights == ([] if weight is None else [weight])


def write_slides(root: Path, dim: int = 16) -> None:
    (root / "features").mkdir(parents=True)
    rows = [("slide_id", "label", "split")]
    generator = torch.Generator().manual_seed(0)
    for i in range(12):
        split = ["train", "train", "val", "test"][i % 4]
        label = "tumor" if i % 2 else "normal"
        features = torch.randn(int(torch.randint(3, 12, (), generator=generator)), dim, generator=generator)
        torch.save(features + (1.5 if label == "tumor" else 0.0), root / "features" / f"slide_{i:02d}.pt")
        rows.append((f"slide_{i:02d}", label, split))
    with open(root / "slides.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def test_the_feature_bags_example_trains_on_a_clam_style_folder(tmp_path):
    write_slides(tmp_path / "slides")
    cli = LightningRegsCLI(
        args=["fit", "--config", str(EXAMPLES / "aem_feature_bags.yaml"), "--trainer.max_epochs=2",
              f"--data.init_args.root={tmp_path / 'slides'}", "--model.init_args.backbone.init_args.in_features=16",
              f"--trainer.default_root_dir={tmp_path / 'runs'}", *SHORT],
    )  # fmt: skip
    assert isinstance(cli.datamodule, FeatureBagDataModule) and cli.datamodule.classes == ("normal", "tumor")
    assert cli.trainer.global_step == 2 * 6  # six training slides, one per step
    assert "val/auroc" in cli.trainer.callback_metrics
    assert list((tmp_path / "runs").rglob("last.ckpt"))
    (result,) = cli.trainer.test(cli.model, cli.datamodule, verbose=False)
    assert 0.0 <= result["test/auroc"] <= 1.0 and "test/attention_entropy" in result


def test_a_feature_width_other_than_the_models_is_named_before_training(tmp_path):
    write_slides(tmp_path / "slides", dim=16)
    with pytest.raises(ValueError, match=r"--model.init_args.backbone.init_args.in_features=16"):
        LightningRegsCLI(
            args=["fit", "--config", str(EXAMPLES / "aem_feature_bags.yaml"), "--trainer.max_epochs=1",
                  f"--data.init_args.root={tmp_path / 'slides'}", f"--trainer.default_root_dir={tmp_path / 'runs'}",
                  *SHORT],
        )  # fmt: skip
