"""``lightning-regs fit --model mymodule.MyClassifier`` from the module's folder, and one-line import errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_regs.cli import main
from lightning_regs.cli_imports import class_path_problem

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
README = (ROOT / "README.md").read_text()
MY_MODULE = '''
from lightning_regs.models import SmallCNN
from lightning_regs.tasks import ImageClassifier


class MyClassifier(ImageClassifier):
    """A subclass with its own signature: the task must not read its settings from LightningCLI's hparams."""

    def __init__(self, width: int = 8, lr: float = 0.05):
        super().__init__(SmallCNN(num_classes=10, in_channels=1, width=width), num_classes=10, lr=lr)
'''
SHORT = [
    "--data=DigitsDataModule",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


@pytest.fixture(autouse=True)
def bare_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-regs"])


def _console_script() -> str:
    return shutil.which("lightning-regs") or str(Path(sys.executable).parent / "lightning-regs")


def test_the_console_script_imports_a_module_from_the_current_directory(tmp_path):
    (tmp_path / "mymodule.py").write_text(MY_MODULE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as a user's shell: nothing set
    (line,) = re.findall(r"^lightning-regs fit --model mymodule\.MyClassifier .*$", README, re.M)  # as documented
    result = subprocess.run(
        [_console_script(), *line.split()[1:], "--model.width=4", *SHORT[1:]],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint,) = (tmp_path / "lightning_logs").glob("version_0/checkpoints/*.ckpt")
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["hyper_parameters"]["width"] == 4 and saved["global_step"] == 2
    assert "lightning_regs.callbacks.LabelSmoothing" in (checkpoint.parents[1] / "config.yaml").read_text()


def test_a_subclass_with_its_own_signature_trains_with_the_task_settings(tmp_path, monkeypatch):
    (tmp_path / "own_task.py").write_text(MY_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    from lightning_regs.cli import LightningRegsCLI

    cli = LightningRegsCLI(args=["--model=own_task.MyClassifier", "--model.lr=0.2", *SHORT], run=False)
    assert cli.model.task_settings.lr == 0.2 and cli.model.task_settings.optimizer == "sgd"
    assert set(cli.model.hparams) - {"_instantiator", "_class_path"} == {"width", "lr"}  # what reloads it


@pytest.mark.parametrize(
    ("source", "path", "expected"),
    [
        (None, "nomodule.MyClassifier", "No module named 'nomodule'. Run the command from the folder that holds"),
        (MY_MODULE, "mymod.MyClasifier", "mymod has no attribute 'MyClasifier'; its classes are"),
        ("x = undefined_name\n", "broken.MyClassifier", "importing broken raised NameError"),
        ("import no_such_dependency\n", "needsdep.M", "importing needsdep failed: No module named"),
    ],
)
def test_a_class_path_that_does_not_import_is_one_line(tmp_path, monkeypatch, capsys, source, path, expected):
    module = path.split(".")[0]
    if source is not None:
        (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() puts the current directory first
    with pytest.raises(SystemExit) as exit_:
        main(["fit", f"--model={path}", "--data=DigitsDataModule"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"lightning-regs: error: Cannot import {path} (given to --model): ") and expected in err
    sys.modules.pop(module, None)


def test_class_paths_in_a_config_file_and_appended_callbacks_are_checked(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(QUICKSTART.read_text().replace("lightning_regs.callbacks.MetricsSummary", "nope.Summary"))
    assert "Cannot import nope.Summary (given to --config " in class_path_problem(["fit", "--config", str(config)])
    problem = class_path_problem(["fit", "--trainer.callbacks+=lightning_regs.callbacks.Nope"])
    assert "lightning_regs.callbacks has no attribute 'Nope'; its classes are" in problem
    # Values that are not class paths are left to LightningCLI.
    assert class_path_problem(["fit", "--ckpt_path", "last.ckpt", "--model=ImageClassifier", "-c", "none.yaml"]) is None


def test_a_bare_class_name_that_nothing_imported_has_points_at_the_file_defining_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "barename.py").write_text(MY_MODULE.replace("MyClassifier", "BareNameClassifier"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--model", "BareNameClassifier", "--data=DigitsDataModule"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert (
        "LightningModule has that name; it is defined in barename.py: give --model barename.BareNameClassifier" in err
    )
    assert "no imported Callback has that name" in class_path_problem(["fit", "--trainer.callbacks+=NoSuchCallback"])
    # Short names of imported classes are LightningCLI's to resolve.
    args = ["fit", "--model=ImageClassifier", "--data", "DigitsDataModule", "--trainer.callbacks+=EarlyStopping"]
    assert class_path_problem(args) is None
