"""Lightning callbacks: monitors, target refinement and weight updates, thin over ``functional``."""

from lightning_regs.callbacks.metrics_summary import MetricsSummary

__all__ = ["MetricsSummary"]
