"""The EMA half of momentum auxiliary networks (MAN, Su et al., ECCV 2024), as a callback."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

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

    Args:
        momentum: EMA momentum in [0, 1]; 0 copies the block every step, 1 freezes the EMA.

    Example::

        >>> from lightning_regs.models import resnet20
        >>> from lightning_regs.tasks.local_learning_classifier import LocalLearningClassifier
        >>> task = LocalLearningClassifier(resnet20(), 10, K=2, split=["s1b2"], man=True)
        >>> callback = MomentumAuxiliaryNetworks(momentum=0.995)
        >>> trainer = pl.Trainer(callbacks=[callback], max_steps=1, logger=False)  # doctest: +SKIP
    """

    def __init__(self, momentum: float = 0.995) -> None:
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] (the paper uses 0.995); got {momentum}.")
        self.momentum = float(momentum)
        self._last_step = 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(momentum=self.momentum)

    @staticmethod
    def _heads(pl_module: pl.LightningModule) -> list[MomentumAuxiliaryHead]:
        return [m for m in pl_module.modules() if isinstance(m, MomentumAuxiliaryHead)]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._heads(pl_module):
            raise ValueError(
                f"MomentumAuxiliaryNetworks found no momentum auxiliary network in {type(pl_module).__name__}: "
                "build the task with man=True (LocalLearningClassifier(..., man=True)) or drop the callback."
            )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step > self._last_step:
            for head in self._heads(pl_module):
                head.update_ema(self.momentum)
            self._last_step = trainer.global_step

    def state_dict(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = int(state_dict["last_step"])
