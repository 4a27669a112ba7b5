"""Each CLI run writes its config next to its own logs: runs twice in one directory, resumes in place, W&B."""

import sys
from pathlib import Path

import pytest
import yaml

from lightning_regs.cli import LightningRegsCLI

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"
SHORT = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
# The README's offline W&B command.
WANDB = ["--trainer.logger=lightning.pytorch.loggers.WandbLogger", "--trainer.logger.offline=true"]


@pytest.fixture(autouse=True)
def bare_argv(monkeypatch):
    """LightningCLI warns when pytest's own arguments are on sys.argv beside ``args``."""
    monkeypatch.setattr(sys, "argv", ["lightning-regs"])


def fit(*args: str) -> None:
    """``lightning-regs fit --config examples/quickstart.yaml`` for two steps, with ``args`` appended."""
    LightningRegsCLI(args=["fit", "--config", str(QUICKSTART), *SHORT, *args])


def test_the_default_logger_runs_twice_and_resumes_each_in_its_own_version(tmp_path):
    fit(f"--trainer.default_root_dir={tmp_path}")
    fit(f"--trainer.default_root_dir={tmp_path}")
    (checkpoint,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt")
    fit(f"--trainer.default_root_dir={tmp_path}", "--trainer.max_epochs=2", f"--ckpt_path={checkpoint}")
    versions = sorted((tmp_path / "lightning_logs").iterdir())
    assert [v.name for v in versions] == ["version_0", "version_1", "version_2"]
    assert all((v / "config.yaml").is_file() for v in versions)
    assert yaml.safe_load((versions[2] / "config.yaml").read_text())["ckpt_path"] == str(checkpoint)


def test_resume_in_place_without_a_logger_keeps_the_first_runs_config(tmp_path):
    fit(f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false")
    original = (tmp_path / "config.yaml").read_text()
    (checkpoint,) = (tmp_path / "checkpoints").glob("*.ckpt")
    fit(
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
        "--trainer.max_epochs=2",
        f"--ckpt_path={checkpoint}",
    )
    assert (tmp_path / "config.yaml").read_text() == original
    resumed = yaml.safe_load((tmp_path / "config-1.yaml").read_text())
    assert resumed["ckpt_path"] == str(checkpoint) and resumed["trainer"]["max_epochs"] == 2


def test_the_readme_wandb_command_runs_twice_and_keeps_its_files_under_the_root_dir(tmp_path, monkeypatch, wandb_mock):
    monkeypatch.chdir(tmp_path)  # the quickstart's default_root_dir, runs/quickstart, is relative
    for run_id in ("run-a", "run-b"):
        wandb_mock.run_mock.id = run_id
        fit(*WANDB)
        assert wandb_mock.init.call_args.kwargs["dir"] == str(tmp_path / "runs" / "quickstart")
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]  # no config.yaml, checkpoints or wandb/ in the cwd
    for run_id in ("run-a", "run-b"):
        run_dir = tmp_path / "runs" / "quickstart" / "lightning_logs" / run_id
        assert (run_dir / "config.yaml").is_file() and list((run_dir / "checkpoints").glob("*.ckpt"))


def test_a_resumed_wandb_run_writes_its_config_beside_the_first(tmp_path, monkeypatch, wandb_mock):
    monkeypatch.chdir(tmp_path)  # a W&B run that ignored default_root_dir would write here
    root = f"--trainer.default_root_dir={tmp_path}"
    fit(*WANDB, root, "--trainer.logger.id=run-a")
    run_dir = tmp_path / "lightning_logs" / "mock-run"  # the id the (fake) W&B run reports
    original = (run_dir / "config.yaml").read_text()
    (checkpoint,) = (run_dir / "checkpoints").glob("*.ckpt")
    fit(*WANDB, root, "--trainer.logger.id=run-a", "--trainer.max_epochs=2", f"--ckpt_path={checkpoint}")
    assert wandb_mock.init.call_args.kwargs["id"] == "run-a"
    assert (run_dir / "config.yaml").read_text() == original
    assert yaml.safe_load((run_dir / "config-1.yaml").read_text())["ckpt_path"] == str(checkpoint)


def test_an_explicit_wandb_save_dir_is_kept(tmp_path, monkeypatch, wandb_mock):
    monkeypatch.chdir(tmp_path)
    fit(*WANDB, f"--trainer.default_root_dir={tmp_path / 'root'}", f"--trainer.logger.save_dir={tmp_path / 'w'}")
    assert wandb_mock.init.call_args.kwargs["dir"] == str(tmp_path / "w")
    assert (tmp_path / "w" / "lightning_logs" / "mock-run" / "config.yaml").is_file()


def test_the_readme_offline_command_runs_twice_with_real_wandb(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    for _ in range(2):
        fit(*WANDB)
        wandb.finish()
    root = tmp_path / "runs" / "quickstart"
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]
    assert len(list((root / "wandb").glob("offline-run-*/run-*.wandb"))) == 2
    assert len(list((root / "lightning_logs").glob("*/config.yaml"))) == 2
