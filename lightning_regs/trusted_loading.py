"""``load_from_checkpoint`` that refuses the class paths a checkpoint names but this process has not imported.

A checkpoint written under LightningCLI stores the model's config, nested ``class_path`` entries included
(``backbone: {class_path: ..., init_args: ...}``), and ``load_from_checkpoint`` rebuilds the model from it through
jsonargparse, which imports the module each ``class_path`` names and calls it. Lightning 2.6.6 checks the top-level
``_instantiator`` and ``_class_path`` (an allowlist, and "already imported" for the class); the nested ones it does
not. So a crafted checkpoint could import, and instantiate, any module on the path. The rule here is Lightning's own,
applied to every ``class_path`` in the saved hyper-parameters: it must name something already imported
(``sys.modules``; checking never imports). If you trust the checkpoint, import the module yourself before loading.
``weights_only=False`` skips the check: unpickling such a file can run anything already, and you said you trust it.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch
import yaml
from typing_extensions import override

__all__ = ["TrustedCheckpointLoading", "UntrustedClassPathError", "check_class_paths", "class_paths"]

_HPARAMS_KEY = "hyper_parameters"  # LightningModule.CHECKPOINT_HYPER_PARAMS_KEY and the DataModule's


class UntrustedClassPathError(ValueError):
    """A checkpoint names a ``class_path`` whose module this process has not imported."""


def class_paths(node: Any, where: str = "hyper_parameters") -> Iterator[tuple[str, str]]:
    """Every ``(location, value)`` of a ``class_path`` / ``_class_path`` key in nested dicts and lists.

    Example::

        >>> saved = {"net": {"class_path": "a.B", "init_args": {"x": [{"class_path": "c.D"}]}}}
        >>> [where for where, _ in class_paths(saved)]
        ['hyper_parameters.net.class_path', 'hyper_parameters.net.init_args.x[0].class_path']
    """
    if isinstance(node, Mapping):
        for key, value in node.items():
            here = f"{where}.{key}"
            if key in ("class_path", "_class_path") and isinstance(value, str):
                yield here, value
            else:
                yield from class_paths(value, here)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from class_paths(value, f"{where}[{i}]")


def _is_imported(path: str) -> bool:
    """Whether ``path`` (``"pkg.mod.Name"``) resolves in ``sys.modules`` without importing anything."""
    if "." not in path:  # a short name: jsonargparse resolves it among classes already imported only
        return True
    module_name, _, name = path.rpartition(".")
    module = sys.modules.get(module_name)
    return module is not None and callable(getattr(module, name, None))


def check_class_paths(hparams: Mapping[str, Any], owner: str, source: str) -> None:
    """Refuse, naming it and the fix, a ``class_path`` in ``hparams`` that is not already imported.

    Example::

        >>> check_class_paths({"backbone": {"class_path": "torch.nn.Linear"}}, "MyTask", "my.ckpt")
        >>> check_class_paths({"backbone": {"class_path": "not_imported_pkg.Net"}}, "MyTask", "my.ckpt")
        Traceback (most recent call last):
        ...
        lightning_regs.trusted_loading.UntrustedClassPathError: my.ckpt asks MyTask.load_from_checkpoint to import ...
    """
    for where, path in class_paths(hparams):
        if not _is_imported(path):
            raise UntrustedClassPathError(
                f"{source} asks {owner}.load_from_checkpoint to import and build {path!r} (at {where}), a class no "
                "module imported so far defines; it was refused, since a checkpoint could otherwise run any installed "
                f"module. If you trust this checkpoint, import {path.rpartition('.')[0]!r} before loading it."
            )


def _saved_hparams(checkpoint_path: str | os.PathLike | IO[bytes]) -> Mapping[str, Any]:
    if hasattr(checkpoint_path, "read"):
        handle: Any = checkpoint_path
        start = handle.tell()
        try:
            checkpoint = torch.load(handle, map_location="cpu", weights_only=True)
        finally:
            handle.seek(start)
    elif Path(checkpoint_path).is_file():
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    else:  # a remote address (Lightning reads those through fsspec)
        import fsspec

        with fsspec.open(os.fspath(checkpoint_path), "rb") as remote:
            checkpoint = torch.load(io.BytesIO(remote.read()), map_location="cpu", weights_only=True)
    hparams = checkpoint.get(_HPARAMS_KEY, {}) if isinstance(checkpoint, Mapping) else {}
    return hparams if isinstance(hparams, Mapping) else {}


class TrustedCheckpointLoading:
    """Mixin for LightningModules and DataModules: ``load_from_checkpoint`` checks the saved class paths first.

    Put it before ``LightningModule``/``LightningDataModule`` in the bases. See the module docstring for the rule.

    Example::

        >>> import lightning.pytorch as pl
        >>> class MyTask(TrustedCheckpointLoading, pl.LightningModule):
        ...     pass
        >>> MyTask.load_from_checkpoint.__func__ is TrustedCheckpointLoading.load_from_checkpoint.__func__
        True
    """

    @classmethod
    @override
    def load_from_checkpoint(
        cls, checkpoint_path: str | os.PathLike | IO[bytes], *args: Any, **kwargs: Any
    ) -> Any:  # the LightningModule or LightningDataModule ``cls`` builds
        if kwargs.get("weights_only") is not False:
            source = checkpoint_path if isinstance(checkpoint_path, (str, os.PathLike)) else "the checkpoint"
            check_class_paths(_saved_hparams(checkpoint_path), cls.__name__, str(source))
            hparams_file = kwargs.get("hparams_file")
            if hparams_file is not None:
                with open(hparams_file, encoding="utf-8") as handle:
                    check_class_paths(yaml.safe_load(handle) or {}, cls.__name__, str(hparams_file))
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)  # type: ignore[misc]
