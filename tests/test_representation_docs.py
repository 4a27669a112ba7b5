"""The neural collapse and DSE cards' own-code blocks and CLI lines run as written; the examples run two epochs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from lightning_regs.callbacks import DiffusionSpectralEntropyMonitor, NeuralCollapseMonitor
from lightning_regs.cli import LightningRegsCLI

ROOT = Path(__file__).resolve().parents[1]
TESTED = re.compile(r"<!-- tested-example -->\s*```python\n(.*?)```", re.S)
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
    (code,) = TESTED.findall((ROOT / "docs/methods/neural_collapse.md").read_text())
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "neural_collapse_example"}
    exec(compile(code, "docs/methods/neural_collapse.md", "exec"), namespace)
    monitor = monitor_of(namespace["trainer"], "neural_collapse")
    assert monitor.classifier(namespace["trainer"].lightning_module)[0] == "classifier"  # found, not named
    assert monitor.points["train"].shape[0] == 1500 and monitor.points["heldout"].shape[0] == 297  # whole splits
    for name in ("nc/train/nc1", "nc/heldout/nc1"):
        assert len(monitor.history[name]) == 4 and monitor.history[name][-1] < monitor.history[name][0] / 2


def test_the_dse_card_block_runs_and_dsmi_with_the_labels_rises(tmp_path, monkeypatch):
    (code,) = TESTED.findall((ROOT / "docs/methods/dse.md").read_text())
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "dse_example"}
    exec(compile(code, "docs/methods/dse.md", "exec"), namespace)
    monitor = monitor_of(namespace["trainer"], "dse")
    assert set(monitor.history) == {
        f"{k}/{layer}{error}"
        for k in ("dse", "dsmi_y", "dsmi_x")
        for layer in ("penultimate", "features.2")
        for error in ("", "_se")
    }
    assert len(monitor.history["dse/penultimate"]) == 4 and monitor.points["train"].shape[0] == 500
    assert monitor.history["dsmi_y/penultimate"][-1] > monitor.history["dsmi_y/penultimate"][0] + 0.3


@pytest.mark.parametrize("name", ["neural_collapse", "dse"])
def test_the_digits_example_runs_two_epochs(name, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-regs"])
    cli = LightningRegsCLI(
        args=[
            "fit", "--config", str(ROOT / "examples" / f"{name}_digits.yaml"), "--trainer.max_epochs=2",
            f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
        ]
    )  # fmt: skip
    monitor = monitor_of(cli.trainer, name)
    assert len(monitor.measured_steps) + len(monitor.skipped_steps) == 3  # before training and after each epoch
    assert monitor.max_overhead == 0.05 and monitor.every_n_epochs == 1  # the default budget; the example's schedule
    (metrics,) = tmp_path.rglob("metrics.csv")
    header = metrics.read_text().splitlines()[0]
    expected = (
        ("nc/train/nc1", "nc/heldout/nc4")
        if name == "neural_collapse"
        else ("dse/penultimate", "dsmi_x/backbone.layers.block2")
    )
    assert all(column in header for column in (*expected, f"{monitor.prefix}/overhead"))
    assert list(tmp_path.rglob(f"{'nc' if name == 'neural_collapse' else 'dse'}.png"))  # the plot at the end


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
