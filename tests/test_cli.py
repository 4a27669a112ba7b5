import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_regs.callbacks import MetricsSummary
from lightning_regs.cli import LightningRegsCLI
from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.models import SmallCNN
from lightning_regs.tasks import ImageClassifier

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
FAST = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(autouse=True)
def bare_argv(monkeypatch):
    """LightningCLI warns when pytest's own arguments are on sys.argv beside ``args``."""
    monkeypatch.setattr(sys, "argv", ["lightning-regs"])


def test_quickstart_config_instantiates_what_it_names():
    cli = LightningRegsCLI(args=["--config", str(QUICKSTART)], run=False)
    assert isinstance(cli.model, ImageClassifier) and isinstance(cli.model.backbone, SmallCNN)
    assert isinstance(cli.datamodule, DigitsDataModule)
    assert any(isinstance(c, MetricsSummary) for c in cli.trainer.callbacks)
    assert cli.trainer.max_epochs == 20


def test_short_names_and_appended_callbacks():
    cli = LightningRegsCLI(
        args=[
            "--model=ImageClassifier",
            "--model.backbone=SmallCNN",
            "--model.num_classes=10",
            "--data=DigitsDataModule",
            "--trainer.callbacks+=MetricsSummary",
            "--trainer.callbacks.prefixes=[val/]",
            "--trainer.callbacks+=EarlyStopping",
            "--trainer.callbacks.monitor=val/loss",
        ],
        run=False,
    )
    summaries = [c for c in cli.trainer.callbacks if isinstance(c, MetricsSummary)]
    assert summaries and summaries[0].prefixes == ("val/",)
    assert any(type(c).__name__ == "EarlyStopping" for c in cli.trainer.callbacks)


def test_omegaconf_interpolation_within_one_file(tmp_path):
    config = yaml.safe_load(QUICKSTART.read_text())
    config["model"]["init_args"]["backbone"]["init_args"]["num_classes"] = "${model.init_args.num_classes}"
    path = tmp_path / "interp.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = LightningRegsCLI(args=["--config", str(path)], run=False)
    assert cli.model.backbone.num_classes == 10


def test_unknown_class_path_names_the_class(capsys):
    with pytest.raises(SystemExit):
        LightningRegsCLI(
            args=[
                "--config",
                str(QUICKSTART),
                "--model.init_args.backbone.class_path=lightning_regs.models.NoSuchNet",
            ],
            run=False,
        )
    assert "NoSuchNet" in capsys.readouterr().err


def test_num_classes_mismatch_in_yaml_is_named(capsys):
    with pytest.raises(ValueError, match="produces 10 logits but num_classes=7"):
        LightningRegsCLI(args=["--config", str(QUICKSTART), "--model.init_args.num_classes=7"], run=False)


def test_print_config_is_complete_and_round_trips(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        LightningRegsCLI(args=["fit", "--config", str(QUICKSTART), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed)
    assert config["model"]["init_args"]["ece_bins"] == 15
    assert config["data"]["init_args"]["val_fraction"] == 0.15
    path = tmp_path / "full.yaml"
    path.write_text(printed)
    with pytest.raises(SystemExit):
        LightningRegsCLI(args=["fit", "--config", str(path), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out) == config


def test_checkpoint_records_the_backbone_config_and_loads_weights_only(tmp_path):
    LightningRegsCLI(
        args=[
            "fit",
            "--config",
            str(QUICKSTART),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            f"--trainer.default_root_dir={tmp_path}",
            *FAST,
        ]
    )
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    model = ImageClassifier.load_from_checkpoint(checkpoint, weights_only=True)
    assert isinstance(model.backbone, SmallCNN)


def test_quickstart_one_epoch_through_python_dash_m(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_regs",
            "fit",
            "--config",
            str(QUICKSTART),
            "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={tmp_path}",
            *FAST,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fit finished in" in result.stdout and "val/acc" in result.stdout


def test_console_script_is_installed():
    script = shutil.which("lightning-regs") or str(Path(sys.executable).parent / "lightning-regs")
    result = subprocess.run([script, "fit", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--config" in result.stdout
