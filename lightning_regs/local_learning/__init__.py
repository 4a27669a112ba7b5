"""Gradient-isolated (local) training: splits, auxiliary heads (DGL, InfoPro, AugLocal), MAN and the mixin."""

from lightning_regs.local_learning.auglocal import AugLocalHead, auglocal_depths, auglocal_indices
from lightning_regs.local_learning.builder import EndToEndWarning
from lightning_regs.local_learning.heads import INFOPRO_LAMBDAS, DGLHead, InfoProHead, TaskLoss, infopro_lambdas
from lightning_regs.local_learning.man import MomentumAuxiliaryHead
from lightning_regs.local_learning.mixin import LocalLearningMixin
from lightning_regs.local_learning.saved_bytes import SavedTensorMeter
from lightning_regs.local_learning.splits import (
    INFOPRO_STAR_SPLITS,
    PAPER_SPLITS,
    auto_split,
    best_partition,
    every_layer_split,
    module_ranges,
    resolve_split,
    split_points,
)

__all__ = [
    "INFOPRO_LAMBDAS",
    "INFOPRO_STAR_SPLITS",
    "PAPER_SPLITS",
    "AugLocalHead",
    "DGLHead",
    "EndToEndWarning",
    "InfoProHead",
    "LocalLearningMixin",
    "MomentumAuxiliaryHead",
    "SavedTensorMeter",
    "TaskLoss",
    "auglocal_depths",
    "auglocal_indices",
    "auto_split",
    "best_partition",
    "every_layer_split",
    "infopro_lambdas",
    "module_ranges",
    "resolve_split",
    "split_points",
]
