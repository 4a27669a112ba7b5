"""The method card's own-module example runs as written, and the PS-KD example configs parse."""

import re
import sys
import warnings
from pathlib import Path

import pytest

from lightning_regs.callbacks import ProgressiveSelfKD
from lightning_regs.cli import LightningRegsCLI

ROOT = Path(__file__).resolve().parents[1]
CARD = (ROOT / "docs" / "methods" / "pskd.md").read_text()


def test_the_own_module_example_runs(tmp_path, monkeypatch):
    (code,) = re.findall(r"<!-- tested-example -->\s*```python\n(.*?)```", CARD, re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "pskd_example"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(code, "docs/methods/pskd.md", "exec"), namespace)
    trainer = namespace["trainer"]
    (pskd,) = [c for c in trainer.callbacks if isinstance(c, ProgressiveSelfKD)]
    assert trainer.current_epoch == 3 and bool(pskd.table.seen.all())
    assert (pskd.table.num_samples, pskd.table.num_classes) == (1500, 10)  # the classes from the logits
    assert float(trainer.callback_metrics["val/acc"]) > 0.8  # it learns the digits in three epochs
    # accepts_soft_targets = True: the module declared it reads class_ids(batch), so no soft-target warning
    assert not [w for w in caught if "accepts_soft_targets" in str(w.message)]


@pytest.mark.parametrize("name", ["pskd_digits.yaml", "pskd_cifar100.yaml"])
def test_example_configs_parse(name, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-regs"])
    cli = LightningRegsCLI(
        args=["--config", str(ROOT / "examples" / name), "--data.init_args.download=false"]
        if "cifar" in name
        else ["--config", str(ROOT / "examples" / name)],
        run=False,
    )
    (pskd,) = [c for c in cli.trainer.callbacks if isinstance(c, ProgressiveSelfKD)]
    assert pskd.alpha_T == 0.8


def test_the_digits_example_runs_two_epochs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["lightning-regs"])
    LightningRegsCLI(
        args=[
            "fit",
            "--config",
            str(ROOT / "examples" / "pskd_digits.yaml"),
            "--trainer.max_epochs=2",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert "val/acc" in capsys.readouterr().out
