"""The neural collapse and DSE cards' own-code blocks and CLI lines run as written (examples: test_example_configs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lightning_regs.callbacks import DiffusionSpectralEntropyMonitor, NeuralCollapseMonitor
from lightning_regs.cli import LightningRegsCLI
from tests.helpers.doc_blocks import block, run_python

ROOT = Path(__file__).resolve().parents[1]
MONITORS = {"neural_collapse": NeuralCollapseMonitor, "dse": DiffusionSpectralEntropyMonitor}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float64 eigenproblems: two threads on two shared cores oversubscribe
    yield
    torch.set_num_threads(threads)


def monitor_of(trainer, name: str):
    (monitor,) = [c for c in trainer.callbacks if isinstance(c, MONITORS[name])]
    return monitor


def test_the_neural_collapse_card_block_runs_and_nc1_falls(tmp_path, monkeypatch):
    code = block("docs/methods/neural_collapse.md")
    monkeypatch.chdir(tmp_path)
    namespace = run_python(code, "docs/methods/neural_collapse.md", "neural_collapse_example")
    monitor = monitor_of(namespace["trainer"], "neural_collapse")
    assert monitor.classifier(namespace["trainer"].lightning_module)[0] == "classifier"  # found, not named
    assert monitor.points["train"].shape[0] == 1500 and monitor.points["heldout"].shape[0] == 297  # whole splits
    for name in ("nc/train/nc1", "nc/heldout/nc1"):
        assert len(monitor.history[name]) == 4 and monitor.history[name][-1] < monitor.history[name][0] / 2


def test_the_dse_card_block_runs_and_dsmi_with_the_labels_rises(tmp_path, monkeypatch):
    code = block("docs/methods/dse.md")
    monkeypatch.chdir(tmp_path)
    namespace = run_python(code, "docs/methods/dse.md", "dse_example")
    monitor = monitor_of(namespace["trainer"], "dse")
    assert set(monitor.history) == {
        f"{k}/{layer}{error}"
        for k in ("dse", "dsmi_y", "dsmi_x")
        for layer in ("penultimate", "features.2")
        for error in ("", "_se")
    }
    assert len(monitor.history["dse/penultimate"]) == 4 and monitor.points["train"].shape[0] == 500
    assert monitor.history["dsmi_y/penultimate"][-1] > monitor.history["dsmi_y/penultimate"][0] + 0.3


@pytest.mark.parametrize(
    ("name", "option"),
    [("NeuralCollapseMonitor", "num_points=null"), ("DiffusionSpectralEntropyMonitor", "num_points=500")],
)
def test_the_cards_cli_lines_parse(name, option, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-regs"])
    cli = LightningRegsCLI(
        args=["--config", str(ROOT / "examples/quickstart.yaml"), f"--trainer.callbacks+={name}",
              f"--trainer.callbacks.{option}"],
        run=False,
    )  # fmt: skip
    (monitor,) = [c for c in cli.trainer.callbacks if type(c).__name__ == name]
    assert monitor.num_points == (None if option.endswith("null") else 500)
