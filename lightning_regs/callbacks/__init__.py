"""Lightning callbacks: monitors, target refinement and weight updates, thin over ``functional``."""

from lightning_regs.callbacks.local_complexity_monitor import LocalComplexityMonitor
from lightning_regs.callbacks.metrics_summary import MetricsSummary
from lightning_regs.callbacks.momentum_auxiliary_networks import MomentumAuxiliaryNetworks
from lightning_regs.callbacks.pskd import ProgressiveSelfKD
from lightning_regs.callbacks.robustness_monitor import AdversarialRobustnessMonitor

__all__ = [
    "AdversarialRobustnessMonitor",
    "LocalComplexityMonitor",
    "MetricsSummary",
    "MomentumAuxiliaryNetworks",
    "ProgressiveSelfKD",
]
