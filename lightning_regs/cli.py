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
from typing import Any

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import ArgsType, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

import lightning_regs.callbacks
import lightning_regs.datamodules
import lightning_regs.models
import lightning_regs.tasks  # noqa: F401  (imported so their short class names resolve in YAML)
from lightning_regs.cli_config import RunConfigCallback, wandb_under_root_dir
from lightning_regs.cli_imports import class_path_problem, import_from_current_directory

__all__ = ["LightningRegsCLI", "main"]


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

    def before_instantiate_classes(self) -> None:
        """Move a ``WandbLogger`` left at ``save_dir="."`` under ``trainer.default_root_dir``."""
        config = self.config.get(str(self.subcommand), self.config)
        wandb_under_root_dir(config.get("trainer"))


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
    reported in one line on stderr (exit status 2) instead of a usage dump.
    """
    import_from_current_directory()
    command_line = sys.argv[1:] if args is None else args
    if isinstance(command_line, (list, tuple)):
        problem = class_path_problem([str(arg) for arg in command_line])
        if problem is not None:
            print(f"lightning-regs: error: {problem}", file=sys.stderr)
            raise SystemExit(2)
    LightningRegsCLI(args=args)


if __name__ == "__main__":
    main()
