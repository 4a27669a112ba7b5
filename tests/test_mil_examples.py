"""The AEM examples' CLI lines; both configs run in test_example_configs.py (the feature bags on write_slides')."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

from lightning_regs.cli import LightningRegsCLI

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SHORT = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(autouse=True)
def _argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-regs"])


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


def test_a_feature_width_other_than_the_models_is_named_before_training(tmp_path):
    write_slides(tmp_path / "slides", dim=16)
    with pytest.raises(ValueError, match=r"--model.init_args.backbone.init_args.in_features=16"):
        LightningRegsCLI(
            args=["fit", "--config", str(EXAMPLES / "aem_feature_bags.yaml"), "--trainer.max_epochs=1",
                  f"--data.init_args.root={tmp_path / 'slides'}", f"--trainer.default_root_dir={tmp_path / 'runs'}",
                  *SHORT],
        )  # fmt: skip
