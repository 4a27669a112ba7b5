"""Lightning callbacks: monitors, target refinement and weight updates, thin over ``functional``."""

from lightning_regs.callbacks.metrics_summary import MetricsSummary
from lightning_regs.callbacks.pskd import ProgressiveSelfKD

__all__ = ["MetricsSummary", "ProgressiveSelfKD"]
