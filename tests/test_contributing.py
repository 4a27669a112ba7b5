"""CONTRIBUTING.md's worked example runs as written, and the label smoothing example config trains."""

import re
import sys
from pathlib import Path

from lightning_regs.callbacks import LabelSmoothing
from lightning_regs.cli import LightningRegsCLI

ROOT = Path(__file__).resolve().parents[1]


def test_the_worked_example_runs_as_written(tmp_path, monkeypatch, capsys):
    page = (ROOT / "CONTRIBUTING.md").read_text()
    (code,) = re.findall(r"<!-- tested-example -->\s*```python\n(.*?)```", page, re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "contributing_example"}
    exec(compile(code, "CONTRIBUTING.md", "exec"), namespace)
    assert namespace["trainer"].global_step == 5
    assert "trained 5 steps" in capsys.readouterr().out


def test_the_label_smoothing_example_config_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["lightning-regs"])
    cli = LightningRegsCLI(
        args=[
            "fit",
            "--config",
            str(ROOT / "examples" / "label_smoothing_digits.yaml"),
            "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, LabelSmoothing)]
    assert callback.smoothing == 0.1
    assert "val/acc" in capsys.readouterr().out
