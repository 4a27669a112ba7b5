"""Deprecated: the task moves MAN's EMA itself (``LocalLearningClassifier(man=True, man_momentum=...)``)."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_regs.local_learning.man import MomentumAuxiliaryHead, check_momentum

__all__ = ["MomentumAuxiliaryNetworks"]

_UPDATE_OF_PRESET = {"library": "after_step", "official": "before_step"}


class MomentumAuxiliaryNetworks(Callback):
    """Deprecated alias that does nothing but check and warn: ``man=True`` on the task is the whole method.

    Momentum auxiliary networks (MAN, Su et al., ECCV 2024) are configured in one place: the task (or
    :class:`~lightning_regs.local_learning.LocalLearningMixin`) that builds the EMA heads moves them once per
    optimizer step, with ``man_momentum`` (default 0.995) and the timing of its ``preset``. This callback updates
    nothing. It warns (``FutureWarning``) when built, and at fit start refuses a ``momentum`` or ``preset`` that
    differs from what the task's heads do (a silent mismatch otherwise) or a task without momentum heads.
    Checkpoints that hold its state still load.

    Args:
        momentum: must equal the task's ``man_momentum``.
        preset: must equal the task's ``preset``.

    Example::

        >>> import pytest
        >>> with pytest.warns(FutureWarning, match="drop the callback"):
        ...     MomentumAuxiliaryNetworks(momentum=0.995)
        MomentumAuxiliaryNetworks(momentum=0.995, preset='library')
    """

    def __init__(self, momentum: float = 0.995, preset: Literal["library", "official"] = "library") -> None:
        check_momentum("MomentumAuxiliaryNetworks", momentum)
        if preset not in _UPDATE_OF_PRESET:
            raise ValueError(f"preset must be 'library' or 'official'; got {preset!r}.")
        self.momentum = float(momentum)
        self.preset = preset
        official = ", preset='official'" if preset == "official" else ""
        warnings.warn(
            "MomentumAuxiliaryNetworks is deprecated and updates nothing: the task moves MAN's EMA itself. Build the "
            f"task with man=True, man_momentum={self.momentum}{official} and drop the callback.",
            FutureWarning,
            stacklevel=2,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(momentum={self.momentum}, preset={self.preset!r})"

    @property
    def state_key(self) -> str:
        if self.preset == "library":  # the key checkpoints written with this callback hold
            return self._generate_state_key(momentum=self.momentum)
        return self._generate_state_key(momentum=self.momentum, preset=self.preset)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        heads = [m for m in pl_module.modules() if isinstance(m, MomentumAuxiliaryHead)]
        task = type(pl_module).__name__
        if not heads:
            raise ValueError(
                f"MomentumAuxiliaryNetworks found no momentum auxiliary network in {task}: build the task with "
                "man=True (LocalLearningClassifier(..., man=True)), which is the whole method, and drop the callback."
            )
        update = _UPDATE_OF_PRESET[self.preset]
        for head in heads:
            if head.momentum != self.momentum or head.update != update:
                raise ValueError(
                    f"MomentumAuxiliaryNetworks(momentum={self.momentum}, preset={self.preset!r}) disagrees with "
                    f"{task}'s momentum heads (momentum={head.momentum}, update={head.update!r}), which move "
                    f"themselves: the callback updates nothing. Build the task with man_momentum={self.momentum}"
                    + (", preset='official'" if self.preset == "official" else "")
                    + " and drop the callback."
                )

    def state_dict(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "preset": self.preset}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Accept the state of checkpoints written when the callback moved the EMA (its last step is not needed)."""
