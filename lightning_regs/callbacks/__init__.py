"""Lightning callbacks: monitors, target refinement and weight updates, thin over ``functional``.

Extension points: :class:`ScheduledMonitor` (the base of every monitor) and
:class:`SoftTargetCallback` (the base of every callback that rewrites ``batch["target"]``).
"""

from lightning_regs.callbacks.dse_monitor import DiffusionSpectralEntropyMonitor
from lightning_regs.callbacks.label_smoothing import LabelSmoothing
from lightning_regs.callbacks.local_complexity_monitor import LocalComplexityMonitor
from lightning_regs.callbacks.metrics_summary import MetricsSummary
from lightning_regs.callbacks.momentum_auxiliary_networks import MomentumAuxiliaryNetworks
from lightning_regs.callbacks.neural_collapse_monitor import NeuralCollapseMonitor
from lightning_regs.callbacks.pskd import ProgressiveSelfKD
from lightning_regs.callbacks.robustness_monitor import AdversarialRobustnessMonitor
from lightning_regs.callbacks.scheduled_monitor import ScheduledMonitor
from lightning_regs.callbacks.soft_target_callback import SoftTargetCallback

__all__ = [
    "AdversarialRobustnessMonitor",
    "DiffusionSpectralEntropyMonitor",
    "LabelSmoothing",
    "LocalComplexityMonitor",
    "MetricsSummary",
    "MomentumAuxiliaryNetworks",
    "NeuralCollapseMonitor",
    "ProgressiveSelfKD",
    "ScheduledMonitor",
    "SoftTargetCallback",
]
