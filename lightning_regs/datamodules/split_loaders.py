"""Deprecated: the loader hooks now live in :class:`~lightning_regs.datamodules.base.SplitDataModule`.

``SplitDataLoaders`` is that class under its old name; subclass ``SplitDataModule`` instead.
"""

from __future__ import annotations

import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "SplitDataLoaders":
        from lightning_regs.datamodules.base import SplitDataModule

        warnings.warn(
            "lightning_regs.datamodules.split_loaders.SplitDataLoaders is deprecated; subclass "
            "lightning_regs.datamodules.base.SplitDataModule, which holds the loaders, the split and the resume rule.",
            DeprecationWarning,
            stacklevel=2,
        )
        return SplitDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
