"""Label smoothing as a callback: the baseline the PS-KD paper compares against."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_regs.callbacks.soft_target_callback import SoftTargetCallback
from lightning_regs.functional._checks import check_number
from lightning_regs.functional.soft_targets import label_smoothing_targets

__all__ = ["LabelSmoothing"]


class LabelSmoothing(SoftTargetCallback):
    """Train towards ``(1 − ε)·onehot(y) + ε/C`` instead of the one-hot labels (Szegedy et al., CVPR 2016).

    Before each training step ``batch["target"]`` becomes the smoothed distribution and the labels stay
    in ``batch["hard_target"]`` (see :class:`~lightning_regs.callbacks.SoftTargetCallback` for how it
    composes with other target-rewriting callbacks, e.g. after PS-KD). With cross-entropy this is the
    same objective as ``F.cross_entropy(logits, y, label_smoothing=ε)``, for any module whose loss
    takes ``(B, C)`` probabilities; an MSE-trained module regresses onto the smoothed targets instead
    of the one-hot. Stateless: nothing to checkpoint.

    Args:
        smoothing: ``ε`` in [0, 1] (0.1 in the PS-KD paper's comparison and in Szegedy et al.).
        num_classes: ``C``; by default the module's or DataModule's ``num_classes``.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_regs.datamodules import DigitsDataModule
        >>> from lightning_regs.models import SmallCNN
        >>> from lightning_regs.tasks import ImageClassifier
        >>> trainer = Trainer(max_steps=2, callbacks=[LabelSmoothing(0.1)], logger=False, enable_checkpointing=False,
        ...                   enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        >>> trainer.fit(ImageClassifier(SmallCNN(width=8), num_classes=10), DigitsDataModule())
        >>> trainer.global_step
        2
    """

    def __init__(self, smoothing: float = 0.1, num_classes: int | None = None) -> None:
        super().__init__(num_classes)
        check_number(type(self).__name__, "smoothing (0.1 is the usual value)", smoothing, low=0, high=1)
        self.smoothing = float(smoothing)

    @override
    def refine_targets(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Mapping[str, Any],
        labels: torch.Tensor,
        targets: torch.Tensor,
    ) -> torch.Tensor:
        return label_smoothing_targets(targets, self.smoothing, targets.shape[1])
