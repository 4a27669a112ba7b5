"""Lightning callbacks: monitors, target refinement and weight updates, thin over ``functional``.

Extension points: :class:`ScheduledMonitor` (the base of every monitor),
:class:`SoftTargetCallback` (the base of every callback that rewrites ``batch["target"]``) and
:class:`InputRewritingCallback` (the base of every callback that rewrites ``batch["image"]``: MixUp, CutMix).
"""

from lightning_regs.callbacks.anomaly_prediction_writer import AnomalyPredictionWriter
from lightning_regs.callbacks.cutmix import CutMix
from lightning_regs.callbacks.dse_monitor import DiffusionSpectralEntropyMonitor
from lightning_regs.callbacks.information_plane_monitor import InformationPlaneMonitor
from lightning_regs.callbacks.input_rewriting_callback import InputRewritingCallback, Rewrite
from lightning_regs.callbacks.label_smoothing import LabelSmoothing
from lightning_regs.callbacks.llc_monitor import LocalLearningCoefficientMonitor
from lightning_regs.callbacks.local_complexity_monitor import LocalComplexityMonitor
from lightning_regs.callbacks.metrics_summary import MetricsSummary
from lightning_regs.callbacks.mixup import MixUp
from lightning_regs.callbacks.mixup_cutmix import MixUpCutMix
from lightning_regs.callbacks.neural_collapse_monitor import NeuralCollapseMonitor
from lightning_regs.callbacks.pskd import ProgressiveSelfKD
from lightning_regs.callbacks.robustness_monitor import AdversarialRobustnessMonitor
from lightning_regs.callbacks.scheduled_monitor import ScheduledMonitor
from lightning_regs.callbacks.soft_target_callback import SoftTargetCallback

__all__ = [
    "AdversarialRobustnessMonitor",
    "AnomalyPredictionWriter",
    "CutMix",
    "DiffusionSpectralEntropyMonitor",
    "InformationPlaneMonitor",
    "InputRewritingCallback",
    "LabelSmoothing",
    "LocalComplexityMonitor",
    "LocalLearningCoefficientMonitor",
    "MetricsSummary",
    "MixUp",
    "MixUpCutMix",
    "NeuralCollapseMonitor",
    "ProgressiveSelfKD",
    "Rewrite",
    "ScheduledMonitor",
    "SoftTargetCallback",
]
