"""CLI inputs that cannot be used are named errors (issue 22, kind 8): ${...} to a missing key, non-UTF-8 configs,
a --ckpt_path that is not a checkpoint."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from lightning_regs.cli import CLIInputError, LightningRegsCLI, main

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
REFUSED = pytest.mark.fault(area="cli", outcome="refused")
HANDLED = pytest.mark.fault(area="cli", outcome="handled")


@pytest.fixture(autouse=True)
def bare_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-regs"])


def _config(tmp_path: Path, key: tuple[str, ...], value: str) -> Path:
    config = yaml.safe_load(QUICKSTART.read_text())
    node = config
    for part in key[:-1]:
        node = node[part]
    node[key[-1]] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


INTERPOLATIONS = [
    (("model", "init_args", "num_classes"), "${data.init_args.no_such_key}", "model.init_args.num_classes"),
    (("model", "init_args", "num_classes"), "${no_such_section.value}", "model.init_args.num_classes"),
    (("trainer", "max_epochs"), "${data.init_args.batch_sizes}", "trainer.max_epochs"),
]


@REFUSED
@pytest.mark.parametrize(("key", "value", "where"), INTERPOLATIONS)
@pytest.mark.parametrize("subcommand", [[], ["fit"]])
def test_an_interpolation_to_a_missing_key_is_named(tmp_path, key, value, where, subcommand) -> None:
    path = _config(tmp_path, key, value)
    words = rf"interpolation at {where} cannot be resolved: .*not found.*absolute from the config's top"
    with pytest.raises(CLIInputError, match=words):
        LightningRegsCLI(args=[*subcommand, "--config", str(path)], run=bool(subcommand))


@REFUSED
@pytest.mark.parametrize(("encoding", "byte"), [("latin-1", "0xe9"), ("utf-16", "0xff"), ("cp1252", "0x93")])
def test_a_config_that_is_not_utf8_is_named(tmp_path, encoding, byte) -> None:
    text = QUICKSTART.read_text() + ("\n# caf\u00e9\n" if encoding != "cp1252" else "\n# \u201cquoted\u201d\n")
    path = tmp_path / "config.yaml"
    path.write_bytes(text.encode(encoding))
    with pytest.raises(CLIInputError, match=rf"config file {path} is not UTF-8 text: byte {byte} on line \d+.*UTF-8"):
        LightningRegsCLI(args=["--config", str(path)], run=False)


def _zip_without_data(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")


def _truncated(path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(100)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CHECKPOINTS = {
    "a text file": (lambda p: p.write_text("epoch=3 loss=0.1\n"), "is not a PyTorch checkpoint \\(it starts with"),
    "an empty file": (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
    "a truncated checkpoint": (_truncated, "is truncated or corrupt"),
    "a zip without data.pkl": (_zip_without_data, r"is a zip archive but not a PyTorch checkpoint \(no data.pkl\)"),
    "a missing file": (lambda p: None, "does not exist"),
    "a folder": (lambda p: p.mkdir(), r"is not a file \(a folder\?\)"),
    "a YAML config": (lambda p: p.write_text(QUICKSTART.read_text()), "is not a PyTorch checkpoint"),
}


@REFUSED
@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_a_ckpt_path_that_is_not_a_checkpoint_is_named(tmp_path, case) -> None:
    write, words = CHECKPOINTS[case]
    path = tmp_path / "model.ckpt"
    write(path)
    args = ["fit", "--config", str(QUICKSTART), "--trainer.logger=false", "--ckpt_path", str(path)]
    with pytest.raises(CLIInputError, match=rf"--ckpt_path {path} {words}.*Pass a .ckpt file that Lightning wrote"):
        LightningRegsCLI(args=args)


@REFUSED
@pytest.mark.parametrize("case", ["an empty file", "a text file"])
def test_main_prints_the_named_error_in_one_line(tmp_path, capsys, case) -> None:
    write, _ = CHECKPOINTS[case]
    path = tmp_path / "model.ckpt"
    write(path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(QUICKSTART), "--ckpt_path", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lightning-regs: error: --ckpt_path {path}") and "Traceback" not in err


@HANDLED
def test_a_utf8_config_with_a_resolvable_interpolation_still_parses(tmp_path) -> None:
    path = _config(
        tmp_path, ("model", "init_args", "backbone", "init_args", "num_classes"), "${model.init_args.num_classes}"
    )
    path.write_text(path.read_text() + "# caf\u00e9 \u2014 UTF-8 is fine\n", encoding="utf-8")
    cli = LightningRegsCLI(args=["--config", str(path)], run=False)
    assert cli.model.backbone.num_classes == 10
