"""Where a CLI run's files go: its config beside its own logs, and W&B's files under the run's root directory.

Used by :mod:`lightning_regs.cli` only.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from jsonargparse import Namespace
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

__all__ = ["RunConfigCallback", "run_dir", "wandb_under_root_dir"]


def run_dir(trainer: Trainer) -> str:
    """The directory of this run's logs, where ``ModelCheckpoint`` puts its ``checkpoints/`` too.

    TensorBoard and CSV loggers: their ``log_dir`` (``<root>/lightning_logs/version_N``, new per run).
    Other loggers (W&B): ``<save_dir>/<name>/<version>`` (``<root>/<project>/<run id>``). No logger:
    the trainer's ``default_root_dir``. Call it on rank zero only: it reads the logger's version.
    """
    if not trainer.loggers:
        return trainer.default_root_dir
    logger = trainer.loggers[0]
    if isinstance(logger, (TensorBoardLogger, CSVLogger)):
        return logger.log_dir
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name), version)


class RunConfigCallback(SaveConfigCallback):
    """Saves the CLI config into the run's own directory (:func:`run_dir`), never over an earlier run's.

    ``config.yaml`` goes beside the run's logs and checkpoints. Where that directory already holds one
    (a run resumed in place with ``--ckpt_path`` under the same W&B id or with no logger), this run's
    config goes to ``config-1.yaml``, ``config-2.yaml``, ... and the file chosen is logged, so a
    directory can be run in again and again and keeps every run's config. ``overwrite=True`` writes
    ``config.yaml`` over the old one instead. The path written is ``config_path``.
    """

    config_path: str | None = None

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Write the config on rank zero, once per callback, before the run starts."""
        if self.already_saved:
            return
        path = None
        if trainer.is_global_zero:
            if self.save_to_log_dir:
                path = self._write(run_dir(trainer))
            self.save_config(trainer, pl_module, stage)
        self.config_path = trainer.strategy.broadcast(path)
        self.already_saved = True

    def _write(self, directory: str) -> str:
        fs = get_filesystem(directory)
        fs.makedirs(directory, exist_ok=True)
        stem, ext = os.path.splitext(self.config_filename)
        path, n = os.path.join(directory, self.config_filename), 0
        while not self.overwrite and fs.isfile(path):
            n += 1
            path = os.path.join(directory, f"{stem}-{n}{ext}")
        if n:
            rank_zero_info(f"{self.config_filename} of an earlier run is in {directory}: this run's config is {path}")
        self.parser.save(self.config, path, skip_none=False, overwrite=self.overwrite, multifile=self.multifile)
        return path


def _is_wandb_logger(class_path: Any) -> bool:
    if not isinstance(class_path, str) or "." not in class_path:
        return False
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False
    return isinstance(cls, type) and issubclass(cls, WandbLogger)


def wandb_under_root_dir(trainer_config: Namespace | None) -> None:
    """Point each ``WandbLogger`` in a parsed ``trainer`` config at the trainer's ``default_root_dir``.

    A ``WandbLogger`` left at its default ``save_dir`` (``"."``, with no ``dir``) gets
    ``save_dir=<default_root_dir>`` made absolute (W&B's service process, which writes the files, may
    have another working directory), so its ``wandb/`` folder, its checkpoints and the config land
    under the run's root directory instead of the current directory. Any other ``save_dir`` or a
    ``dir`` is kept.
    """
    root = trainer_config.get("default_root_dir") if trainer_config is not None else None
    if root is None:
        return
    loggers = trainer_config.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if not isinstance(logger, Namespace) or not _is_wandb_logger(logger.get("class_path")):
            continue
        init_args = logger.get("init_args")
        if init_args is None:
            logger.init_args = init_args = Namespace()
        if init_args.get("save_dir", ".") in (".", None) and init_args.get("dir") is None:
            init_args.save_dir = os.path.abspath(root)
            os.makedirs(init_args.save_dir, exist_ok=True)
