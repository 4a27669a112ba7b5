"""MixUp as a callback: convex combinations of pairs of training images and of their targets."""

from __future__ import annotations

from lightning_regs.callbacks.input_rewriting_callback import MixMode
from lightning_regs.callbacks.mixup_cutmix import MixUpCutMix
from lightning_regs.functional._checks import check_number

__all__ = ["MixUp"]


class MixUp(MixUpCutMix):
    """MixUp (Zhang et al., ICLR 2018): train on ``λ·x_i + (1 − λ)·x_j`` with target ``λ·y_i + (1 − λ)·y_j``.

    ``λ ~ Beta(α, α)`` per batch (or per row with ``per_sample=True``) and ``j`` a random permutation of the batch;
    see :class:`~lightning_regs.callbacks.MixUpCutMix` for the arguments and
    :class:`~lightning_regs.callbacks.InputRewritingCallback` for how it composes with label smoothing and PS-KD,
    DDP (pairs per rank) and resume (the draws are checkpointed). Training accuracy under mixing credits both
    labels in proportion λ (``ImageClassifier`` logs that as ``train/acc``; see the card).

    Args:
        alpha: α of the Beta distribution (0.2 is the usual ImageNet value, 1.0 the CIFAR one).
        per_sample: one λ per row instead of one per batch.
        mode: ``"targets"`` (mix the targets) or ``"loss"`` (the module interpolates a loss over class ids).
        prob: the probability that a batch is mixed at all.
        seed: seed of the private generator.
        num_classes: columns of the mixed targets; by default the module's or the DataModule's.

    Example::

        >>> import torch
        >>> batch = {"image": torch.randn(5, 1, 8, 8), "target": torch.tensor([0, 1, 2, 3, 4])}
        >>> MixUp(alpha=0.2, num_classes=5).rewrite_batch(None, None, batch)
        >>> batch["target"].shape, torch.allclose(batch["target"].sum(1), torch.ones(5))
        (torch.Size([5, 5]), True)
    """

    def __init__(
        self,
        alpha: float = 0.2,
        per_sample: bool = False,
        mode: MixMode = "targets",
        prob: float = 1.0,
        seed: int = 0,
        num_classes: int | None = None,
    ) -> None:
        check_number(type(self).__name__, "alpha (0.2 on ImageNet, 1.0 on CIFAR)", alpha, low=0, low_open=True)
        super().__init__(alpha, 0.0, 0.0, per_sample, mode, prob, seed, num_classes)
        self.alpha = float(alpha)
