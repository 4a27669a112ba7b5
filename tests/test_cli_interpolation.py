"""``${...}`` interpolation in a CLI config is resolved after the command-line overrides."""

import sys

import pytest
import yaml
from lightning.pytorch import LightningDataModule

from lightning_regs.cli import LightningRegsCLI

CONFIG = """\
model:
  class_path: lightning_regs.tasks.ImageClassifier
  init_args:
    num_classes: ${data.init_args.num_classes}
    backbone:
      class_path: lightning_regs.models.SmallCNN
      init_args:
        num_classes: ${model.init_args.num_classes}
        in_channels: 1
        width: 8
data:
  class_path: tests.test_cli_interpolation.ClassCountDataModule
  init_args:
    num_classes: 5
"""


class ClassCountDataModule(LightningDataModule):
    """A DataModule whose class count is an init argument, for configs to interpolate."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes


@pytest.fixture(autouse=True)
def bare_argv(monkeypatch):
    """LightningCLI warns when pytest's own arguments are on sys.argv beside ``args``."""
    monkeypatch.setattr(sys, "argv", ["lightning-regs"])


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "interp.yaml"
    path.write_text(CONFIG)
    return str(path)


def class_counts(cli: LightningRegsCLI) -> tuple[int, int, int]:
    return cli.datamodule.num_classes, cli.model.num_classes, cli.model.backbone.num_classes


def test_interpolation_without_overrides(config):
    assert class_counts(LightningRegsCLI(args=["--config", config], run=False)) == (5, 5, 5)


def test_a_command_line_override_reaches_the_values_that_interpolate_it(config):
    cli = LightningRegsCLI(args=["--config", config, "--data.init_args.num_classes=3"], run=False)
    assert class_counts(cli) == (3, 3, 3)


def test_overriding_an_interpolated_value_itself_wins_and_propagates(config):
    cli = LightningRegsCLI(args=["--config", config, "--model.init_args.num_classes=4"], run=False)
    assert class_counts(cli) == (5, 4, 4)


def test_the_fit_subcommand_resolves_after_overrides(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        LightningRegsCLI(args=["fit", "--config", config, "--data.init_args.num_classes=3", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    model = printed["model"]["init_args"]
    assert (model["num_classes"], model["backbone"]["init_args"]["num_classes"]) == (3, 3)
