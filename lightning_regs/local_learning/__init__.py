"""Gradient-isolated (local) training: splits, auxiliary heads, momentum auxiliary networks and the mixin."""

from lightning_regs.local_learning.heads import INFOPRO_LAMBDAS, DGLHead, InfoProHead, infopro_lambdas
from lightning_regs.local_learning.man import MomentumAuxiliaryHead
from lightning_regs.local_learning.mixin import LocalLearningMixin
from lightning_regs.local_learning.saved_bytes import SavedTensorMeter
from lightning_regs.local_learning.splits import (
    INFOPRO_STAR_SPLITS,
    PAPER_SPLITS,
    auto_split,
    best_partition,
    module_ranges,
    resolve_split,
    split_points,
)

__all__ = [
    "INFOPRO_LAMBDAS",
    "INFOPRO_STAR_SPLITS",
    "PAPER_SPLITS",
    "DGLHead",
    "InfoProHead",
    "LocalLearningMixin",
    "MomentumAuxiliaryHead",
    "SavedTensorMeter",
    "auto_split",
    "best_partition",
    "infopro_lambdas",
    "module_ranges",
    "resolve_split",
    "split_points",
]
