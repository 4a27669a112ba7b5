"""Pure torch computations behind every method: no Lightning import, tested against equations."""

from lightning_regs.functional.classification import classification_loss, hard_labels, is_soft_target

__all__ = ["classification_loss", "hard_labels", "is_soft_target"]
