"""Ready LightningModules that honour the dict batch contract."""

from lightning_regs.tasks.image_classifier import ImageClassifier
from lightning_regs.tasks.optim import WarmupSchedule, build_optimizer

__all__ = ["ImageClassifier", "WarmupSchedule", "build_optimizer"]
