"""Pure torch computations behind every method: no Lightning import, tested against equations."""

from lightning_regs.functional.classification import classification_loss, hard_labels, is_soft_target
from lightning_regs.functional.prediction_table import PredictionTable
from lightning_regs.functional.pskd import pskd_alpha, pskd_targets

__all__ = [
    "PredictionTable",
    "classification_loss",
    "hard_labels",
    "is_soft_target",
    "pskd_alpha",
    "pskd_targets",
]
