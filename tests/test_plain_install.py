"""The README's plain ``pip install .`` (no matplotlib, timm or wandb): the quickstart and every card's first
example run to completion, the monitors warn once at fit start instead of failing at the end, and the numbers
the README quotes are the ones the quickstart command prints."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from lightning.pytorch import Callback, Trainer

from lightning_regs.callbacks import LocalComplexityMonitor
from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.models import MLP
from lightning_regs.tasks import ImageClassifier
from tests.helpers.doc_blocks import block
from tests.helpers.plain_install import plain_install_env
from tests.helpers.trainers import QUIET

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CARDS = sorted(path for path in (ROOT / "docs" / "methods").glob("*.md") if not path.name.startswith("_"))
MONITOR_CARDS = {
    "local_complexity.md",
    "robustness_monitor.md",
    "neural_collapse.md",
    "dse.md",
    "llc.md",
    "information_plane.md",
}
# What may differ between machines in what the quickstart prints (another CPU or BLAS rounds differently).
TOLERANCE = {"acc": 0.005, "ece": 0.005, "loss": 0.01, "nonfinite_inputs": 0.0}


class WarningsAtTrainStart(Callback):
    def __init__(self, caught: list) -> None:
        self.caught, self.seen = caught, None

    def on_train_start(self, trainer, pl_module) -> None:
        self.seen = [str(w.message) for w in self.caught]


def test_a_monitor_without_matplotlib_warns_once_at_fit_start_and_the_run_finishes(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as on a plain install
    monitor = LocalComplexityMonitor(radius=0.5, num_directions=2, num_points=4, every_n_epochs=1, max_overhead=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe = WarningsAtTrainStart(caught)
        trainer = Trainer(
            max_epochs=2, limit_train_batches=2, limit_val_batches=1, default_root_dir=tmp_path,
            callbacks=[monitor, probe], **QUIET,
        )  # fmt: skip
        task = ImageClassifier(MLP(in_features=64, num_classes=10, width=16, depth=2), 10)
        trainer.fit(task, DigitsDataModule(batch_size=16))
    about_plot = [m for m in probe.seen if "will not draw its plot" in m]
    assert len(about_plot) == 1 and "pip install 'lightning-regs[plots]'" in about_plot[0]
    assert len([w for w in caught if "will not draw its plot" in str(w.message)]) == 1  # not again at the end
    assert monitor.measured_steps == [0, 2, 4] and not list(tmp_path.rglob("*.png"))


def test_plot_false_is_silent_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monitor = LocalComplexityMonitor(radius=0.5, num_directions=2, num_points=4, every_n_epochs=1, plot=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=[monitor], **QUIET).fit(
            ImageClassifier(MLP(in_features=64, num_classes=10, width=16, depth=2), 10), DigitsDataModule()
        )
    assert not [w for w in caught if "plot" in str(w.message)]


@pytest.mark.slow
def test_every_cards_first_example_runs_without_the_optional_extras(tmp_path):
    runner = ROOT / "tests" / "helpers" / "run_card_examples.py"
    env = plain_install_env(tmp_path / "site")
    env["OMP_NUM_THREADS"] = "1"  # the cards' runs are tiny: one thread is faster on a shared machine
    result = subprocess.run(
        [sys.executable, str(runner), *map(str, CARDS)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    reports = {
        r["card"]: r for r in (json.loads(line[5:]) for line in result.stdout.splitlines() if line[:5] == "CARD ")
    }
    assert set(reports) == {card.name for card in CARDS}, result.stderr[-3000:]
    failed = {name: r["error"] for name, r in reports.items() if not r["ok"]}
    assert not failed, failed
    for name in MONITOR_CARDS:  # each monitor card's first example measures more than step 0
        (steps,) = reports[name]["measured_steps"].values()
        assert len(steps) >= 2 and steps[0] == 0 and steps[-1] > 0, (name, steps)


def _quoted_quickstart_output() -> dict[str, float]:
    return _metrics(block("README.md", "quickstart-output", "text"))


def _metrics(text: str) -> dict[str, float]:
    return {name: float(value) for name, value in re.findall(r"^\s+(\w+/\w+)\s+([0-9.]+)\s*$", text, re.M)}


@pytest.mark.slow
def test_the_quickstart_prints_what_the_readme_quotes_without_the_optional_extras(tmp_path):
    command = block("README.md", "quickstart-command", "bash").strip()
    install, run = command.split(" && ")
    assert install == "pip install ." and run.startswith("lightning-regs fit --config examples/")
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "quickstart.yaml", tmp_path / "examples")
    script = shutil.which("lightning-regs") or str(Path(sys.executable).parent / "lightning-regs")
    env = plain_install_env(tmp_path / "site")
    env["OMP_NUM_THREADS"] = "1"  # the same numbers as at the default thread count, faster on a loaded machine
    result = subprocess.run(
        [script, *run.split()[1:], "--trainer.enable_progress_bar=false"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    printed, quoted = _metrics(result.stdout), _quoted_quickstart_output()
    expected = {"train/acc", "train/loss", "val/acc", "val/ece", "val/loss", "val/nonfinite_inputs"}
    assert set(quoted) == expected and set(printed) == set(quoted)
    for name, value in quoted.items():
        assert printed[name] == pytest.approx(value, abs=TOLERANCE[name.split("/")[1]]), (name, printed, quoted)
    prose = re.search(r"reaches \*\*([0-9.]+)% validation accuracy\*\* \(val ECE ([0-9.]+)\)", README)
    assert prose, "the README's sentence quoting the quickstart's accuracy and ECE"
    assert float(prose.group(1)) / 100 == pytest.approx(quoted["val/acc"], abs=5e-4)
    assert float(prose.group(2)) == pytest.approx(quoted["val/ece"], abs=5e-4)


def _card_commands() -> dict[str, str]:
    """The cards' one-line CLI commands that append a monitor to the quickstart."""
    commands = {}
    for card in CARDS:
        for line in re.findall(r"^lightning-regs fit --config examples/quickstart\.yaml .*$", card.read_text(), re.M):
            if card.name in MONITOR_CARDS:
                commands[card.name] = line
    return commands


@pytest.mark.slow
@pytest.mark.parametrize("card", sorted(_card_commands()))
def test_a_monitor_cards_cli_line_finishes_and_prints_its_summary_without_matplotlib(card, tmp_path):
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "quickstart.yaml", tmp_path / "examples")
    script = shutil.which("lightning-regs") or str(Path(sys.executable).parent / "lightning-regs")
    env = plain_install_env(tmp_path / "site")
    env["OMP_NUM_THREADS"] = "1"
    short = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=3", "--trainer.enable_progress_bar=false"]
    result = subprocess.run(
        [script, *_card_commands()[card].split()[1:], *short],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fit finished in" in result.stdout and "will not draw its plot" in result.stderr
    assert "measured at step" not in result.stdout  # the card's line measures up to the last step
    assert not list(tmp_path.rglob("*.png"))
