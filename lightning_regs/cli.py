"""The LightningCLI entry point: ``lightning-regs fit --config X.yaml`` or ``python -m lightning_regs ...``.

Any LightningModule, LightningDataModule, callback or logger can be named in YAML, by its full
class path or, for classes of this package and of Lightning, by its short name.

Interpolation: configs are read in jsonargparse's ``omegaconf+`` mode, so ``${...}`` is resolved once,
after the config files and the command-line overrides are merged: with
``model.init_args.num_classes: ${data.init_args.num_classes}`` in a YAML,
``--data.init_args.num_classes=3`` sets the model's to 3 too. Paths are absolute from the config's
top (``${model.init_args.num_classes}``), as in OmegaConf mode, and may name defaults not written in
the file. ``--print_config`` and the saved config show the resolved values.

Where a run's files go (see :mod:`lightning_regs.cli_config`): the config is saved as
``config.yaml`` in the run's own log directory, beside its checkpoints
(``<default_root_dir>/lightning_logs/version_N/``; with a ``WandbLogger``
``<default_root_dir>/<project>/<run id>/``; with ``--trainer.logger=false`` the
``default_root_dir``), so the same command runs again in the same directory. A run resumed in place
with ``--ckpt_path`` writes ``config-1.yaml``, ``config-2.yaml``, ... where a ``config.yaml`` exists
and never overwrites it. A ``WandbLogger`` left at its default ``save_dir`` writes under
``default_root_dir`` (its ``wandb/`` folder included) instead of the current directory.

Example::

    >>> cli = LightningRegsCLI(args=["--model=ImageClassifier", "--model.backbone=SmallCNN",
    ...                              "--model.num_classes=10", "--data=DigitsDataModule"], run=False)
    >>> type(cli.model).__name__, type(cli.datamodule).__name__
    ('ImageClassifier', 'DigitsDataModule')
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path
from typing import Any

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import ArgsType, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf.errors import InterpolationResolutionError
from typing_extensions import override

import lightning_regs.callbacks
import lightning_regs.datamodules
import lightning_regs.models
import lightning_regs.tasks  # noqa: F401  (imported so their short class names resolve in YAML)
from lightning_regs.cli_config import RunConfigCallback, wandb_under_root_dir
from lightning_regs.cli_imports import class_path_problem, import_from_current_directory

__all__ = ["CLIInputError", "LightningRegsCLI", "main"]

_CKPT_KEYWORDS = ("last", "best", "hpc")  # --ckpt_path values Lightning resolves itself


class CLIInputError(ValueError):
    """A command-line input that cannot be used: a config that is not UTF-8 or whose ``${...}`` does not resolve, a
    ``--ckpt_path`` that is not a checkpoint. The message names the input and the fix; ``main`` prints it in one line.
    """


class LightningRegsCLI(LightningCLI):
    """``LightningCLI`` in subclass mode for model and data, with interpolation resolved after overrides.

    Args:
        args: the command line to parse instead of ``sys.argv[1:]`` (a list or a dict).
        **kwargs: forwarded to :class:`~lightning.pytorch.cli.LightningCLI`; ``parser_kwargs`` are
            merged with ``{"parser_mode": "omegaconf+"}``, and ``save_config_callback`` defaults to
            :class:`~lightning_regs.cli_config.RunConfigCallback`.

    Constructing one sets jsonargparse's process-wide ``omegaconf_absolute_to_relative_paths``
    parsing setting, which makes ``omegaconf+`` read absolute ``${a.b}`` paths from the config's top
    under the ``fit``/``validate``/... subcommands too.
    """

    def __init__(self, args: ArgsType = None, **kwargs: Any) -> None:
        parser_kwargs = {"parser_mode": _interpolation_mode(), **kwargs.pop("parser_kwargs", {})}
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", RunConfigCallback)
        super().__init__(args=args, parser_kwargs=parser_kwargs, **kwargs)

    @override
    def parse_arguments(self, parser: Any, args: ArgsType) -> None:
        """LightningCLI's parsing, with config files checked as UTF-8 first, ``${...}`` errors named and
        ``--ckpt_path`` checked to be a checkpoint."""
        command_line = sys.argv[1:] if args is None else args
        if isinstance(command_line, (list, tuple)):
            for path in _config_files([str(arg) for arg in command_line]):
                check_config_encoding(path)
        try:
            super().parse_arguments(parser, args)
        except InterpolationResolutionError as error:
            raise CLIInputError(_interpolation_message(error)) from None
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config.get(str(subcommand), {}).get("ckpt_path") if subcommand else None
        if ckpt_path is not None:  # before LightningCLI reads its hyper-parameters
            check_checkpoint_file(str(ckpt_path))

    @override
    def before_instantiate_classes(self) -> None:
        """Move a ``WandbLogger`` left at ``save_dir="."`` under ``trainer.default_root_dir``."""
        config = self.config.get(str(self.subcommand), self.config)
        wandb_under_root_dir(config.get("trainer"))


def _config_files(args: list[str]) -> list[str]:
    files = []
    for position, arg in enumerate(args):
        flag, equals, value = arg.partition("=")
        if flag in ("--config", "-c"):
            value = value if equals else (args[position + 1] if position + 1 < len(args) else "")
            if value and Path(value).is_file():
                files.append(value)
    return files


def check_config_encoding(path: str) -> None:
    """Refuse a config file that is not UTF-8 text, naming the byte, its line and how to convert the file."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise CLIInputError(
            f"The config file {path} is not UTF-8 text: byte 0x{data[error.start]:02x} on line {line} is not valid "
            "UTF-8 (the file was saved in another encoding, e.g. Latin-1 or UTF-16). Save it as UTF-8 (e.g. "
            f"`iconv -f latin1 -t utf-8 {path} > fixed.yaml`) and pass that file."
        ) from None


def check_checkpoint_file(path: str) -> None:
    """Refuse a ``--ckpt_path`` that does not exist, is empty, is not a PyTorch checkpoint or is truncated."""
    if path in _CKPT_KEYWORDS or path.startswith("registry") or "://" in path:
        return
    file = Path(path).expanduser()
    fix = "Pass a .ckpt file that Lightning wrote (ModelCheckpoint's last.ckpt or a saved epoch), or drop --ckpt_path."
    if not file.exists():
        raise CLIInputError(f"--ckpt_path {path} does not exist. {fix}")
    if not file.is_file():
        raise CLIInputError(f"--ckpt_path {path} is not a file (a folder?). {fix}")
    size = file.stat().st_size
    if size == 0:
        raise CLIInputError(f"--ckpt_path {path} is empty (0 bytes): the save was interrupted. {fix}")
    with open(file, "rb") as handle:
        head = handle.read(8)
    if head[:1] == b"\x80":  # torch's legacy (pre-1.6) format, a pickle
        return
    if head[:4] != b"PK\x03\x04":
        shown = head.decode("utf-8", "replace").encode("unicode_escape").decode()
        raise CLIInputError(
            f"--ckpt_path {path} is not a PyTorch checkpoint (it starts with {shown!r}, not a zip archive as "
            f"torch.save writes). {fix}"
        )
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        raise CLIInputError(
            f"--ckpt_path {path} is truncated or corrupt ({size} bytes, not a complete zip archive): the save was "
            f"interrupted or the copy is incomplete. {fix}"
        ) from None
    if not any(name.endswith("data.pkl") for name in names):
        raise CLIInputError(f"--ckpt_path {path} is a zip archive but not a PyTorch checkpoint (no data.pkl). {fix}")


def _interpolation_message(error: InterpolationResolutionError) -> str:
    key = str(getattr(error, "full_key", "") or "").split(".", 1)
    where = key[-1] if key and key[0] in ("fit", "validate", "test", "predict") else ".".join(key)
    detail = str(error).splitlines()[0]
    return (
        f"The config's ${{...}} interpolation at {where or 'a key'} cannot be resolved: {detail}. Interpolation paths "
        "are absolute from the config's top (e.g. ${data.init_args.num_classes}): fix the path, or give the key it "
        "names (in the YAML or as --<key>=<value>)."
    )


def _interpolation_mode() -> str:
    """``"omegaconf+"`` with absolute interpolation paths; ``"omegaconf"`` (with a warning) on jsonargparse < 4.42."""
    try:
        set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    except TypeError:
        rank_zero_warn(
            "jsonargparse < 4.42: ${...} interpolation is resolved within each config file, before command-line"
            " overrides. Upgrade jsonargparse (>=4.43) to resolve it after them."
        )
        return "omegaconf"
    return "omegaconf+"


def main(args: ArgsType = None) -> None:
    """Run the CLI (the ``lightning-regs`` console script and ``python -m lightning_regs``).

    Modules in the current directory import as under ``python -m``, and a class path that does not import is
    reported in one line on stderr (exit status 2) instead of a usage dump, as is a :class:`CLIInputError` (a config
    that is not UTF-8 or whose ``${...}`` does not resolve, a ``--ckpt_path`` that is not a checkpoint).
    """
    import_from_current_directory()
    command_line = sys.argv[1:] if args is None else args
    if isinstance(command_line, (list, tuple)):
        problem = class_path_problem([str(arg) for arg in command_line])
        if problem is not None:
            print(f"lightning-regs: error: {problem}", file=sys.stderr)
            raise SystemExit(2)
    try:
        LightningRegsCLI(args=args)
    except CLIInputError as error:
        print(f"lightning-regs: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
