"""The EMA half of momentum auxiliary networks (MAN, Su et al., ECCV 2024), as a callback."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lightning_regs.local_learning.man import MomentumAuxiliaryHead

__all__ = ["MomentumAuxiliaryNetworks"]


class MomentumAuxiliaryNetworks(Callback):
    """Update every momentum auxiliary network's EMA once per optimizer step.

    After each optimizer step, each :class:`~lightning_regs.local_learning.man.MomentumAuxiliaryHead` of the
    LightningModule moves its EMA copy towards the block it tracks:
    ``theta_ema <- momentum · theta_ema + (1 - momentum) · theta_block``, over weights only (BatchNorm running
    statistics are left alone). The update is guarded by ``trainer.global_step``, so it happens once per
    optimizer step whatever the number of batches per step. The EMA weights are part of the module's
    state dict; the callback's own state (the last updated step) is in the checkpoint under
    :attr:`state_key`. The official code defaults to ``momentum=1.0``, which never updates the EMA; the
    paper's 0.995 is the default here.

    ``preset="official"`` updates where the official code does: after the backward, *before* the optimizer
    step (``on_before_optimizer_step``), so the EMA follows the weights the step starts from, one step behind
    the default. Build the task with ``preset="official"`` too for the official (random) initialization.

    Args:
        momentum: EMA momentum in [0, 1]; 0 copies the block every step, 1 freezes the EMA.
        preset: ``"library"`` (update after each optimizer step) or ``"official"`` (before it).

    Example::

        >>> from lightning_regs.models import resnet20
        >>> from lightning_regs.tasks.local_learning_classifier import LocalLearningClassifier
        >>> task = LocalLearningClassifier(resnet20(), 10, K=2, split=["s1b2"], man=True)
        >>> callback = MomentumAuxiliaryNetworks(momentum=0.995)
        >>> trainer = pl.Trainer(callbacks=[callback], max_steps=1, logger=False)  # doctest: +SKIP
    """

    def __init__(self, momentum: float = 0.995, preset: Literal["library", "official"] = "library") -> None:
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] (the paper uses 0.995); got {momentum}.")
        if preset not in ("library", "official"):
            raise ValueError(f"preset must be 'library' or 'official'; got {preset!r}.")
        self.momentum = float(momentum)
        self.preset = preset
        self._last_step = 0

    @property
    def state_key(self) -> str:
        if self.preset == "library":  # unchanged key: checkpoints written before the preset existed still load
            return self._generate_state_key(momentum=self.momentum)
        return self._generate_state_key(momentum=self.momentum, preset=self.preset)

    @staticmethod
    def _heads(pl_module: pl.LightningModule) -> list[MomentumAuxiliaryHead]:
        return [m for m in pl_module.modules() if isinstance(m, MomentumAuxiliaryHead)]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._heads(pl_module):
            raise ValueError(
                f"MomentumAuxiliaryNetworks found no momentum auxiliary network in {type(pl_module).__name__}: "
                "build the task with man=True (LocalLearningClassifier(..., man=True)) or drop the callback."
            )
        spec = getattr(pl_module, "local_spec", None)
        task_preset = getattr(spec, "preset", self.preset)
        if task_preset != self.preset:
            rank_zero_warn(
                f"MomentumAuxiliaryNetworks(preset={self.preset!r}) on a task built with preset={task_preset!r}: "
                "the EMA's initialization follows the task's preset and its update timing the callback's. Give "
                "both the same preset for the official (or the library's) MAN."
            )

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self.preset == "official" and trainer.global_step + 1 > self._last_step:
            for head in self._heads(pl_module):
                head.update_ema(self.momentum)
            self._last_step = trainer.global_step + 1  # the step about to be taken

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.preset == "library" and trainer.global_step > self._last_step:
            for head in self._heads(pl_module):
                head.update_ema(self.momentum)
            self._last_step = trainer.global_step

    def state_dict(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "preset": self.preset, "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = int(state_dict["last_step"])
