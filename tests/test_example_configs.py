"""Every example config builds its model and DataModule as written, and its header names the command that runs it.

Configs on bundled or generated data are also trained by the tests of their method; this test covers every file,
including the ones whose data cannot be downloaded here (CIFAR, CUB, MVTec AD, RadImageNet), so none rots unseen.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest

from lightning_regs.cli import LightningRegsCLI

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIGS = sorted(EXAMPLES.glob("*.yaml"))


def test_there_are_example_configs() -> None:
    assert len(CONFIGS) >= 20


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.stem)
def test_the_config_builds_its_model_and_data(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning-regs"])
    cli = LightningRegsCLI(args=["--config", str(config)], run=False)
    assert isinstance(cli.model, pl.LightningModule)
    assert isinstance(cli.datamodule, pl.LightningDataModule)
    assert cli.trainer.max_epochs or cli.trainer.max_steps > 0  # every example ends


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.stem)
def test_the_header_names_the_command_that_runs_it(config: Path) -> None:
    header = [line for line in config.read_text().splitlines()[:8] if line.startswith("#")]
    assert any(f"--config examples/{config.name}" in line for line in header), f"{config.name}: no command in header"
