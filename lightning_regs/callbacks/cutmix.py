"""CutMix as a callback: a box of one training image pasted into another, the target mixed by the area."""

from __future__ import annotations

from lightning_regs.callbacks.input_rewriting_callback import MixMode
from lightning_regs.callbacks.mixup_cutmix import MixUpCutMix
from lightning_regs.functional._checks import check_number

__all__ = ["CutMix"]


class CutMix(MixUpCutMix):
    """CutMix (Yun et al., ICCV 2019): paste a box of ``x_j`` into ``x_i``; the target is ``λ·y_i + (1 − λ)·y_j``.

    The box has area ``(1 − λ)·H·W`` with ``λ ~ Beta(α, α)``, a centre drawn uniformly on the image and is clipped
    to it; λ is then corrected to the share of ``x_i``'s pixels left, as timm (``correct_lam``) and torchvision's
    ``v2.CutMix`` do. ``j`` is a random permutation of the batch. See :class:`~lightning_regs.callbacks.MixUpCutMix`
    for the arguments and :class:`~lightning_regs.callbacks.InputRewritingCallback` for composition, DDP and resume.

    Args:
        alpha: α of the Beta distribution (1.0 in the paper).
        per_sample: one λ and one box per row instead of one λ and one box per batch.
        mode: ``"targets"`` (mix the targets) or ``"loss"`` (the module interpolates a loss over class ids).
        prob: the probability that a batch is mixed at all (0.5 in the paper's CIFAR recipe).
        seed: seed of the private generator.
        num_classes: columns of the mixed targets; by default the module's or the DataModule's.

    Example::

        >>> import torch
        >>> batch = {"image": torch.randn(3, 1, 8, 8), "target": torch.tensor([0, 1, 2])}
        >>> CutMix(num_classes=3).rewrite_batch(None, None, batch)
        >>> lam = batch["mix_lambda"]
        >>> bool(((lam * 64) % 1 == 0).all()), bool((lam == lam[0]).all())  # whole pixels; one box per batch
        (True, True)
    """

    def __init__(
        self,
        alpha: float = 1.0,
        per_sample: bool = False,
        mode: MixMode = "targets",
        prob: float = 1.0,
        seed: int = 0,
        num_classes: int | None = None,
    ) -> None:
        check_number(type(self).__name__, "alpha (1.0 in the CutMix paper)", alpha, low=0, low_open=True)
        super().__init__(0.0, alpha, 1.0, per_sample, mode, prob, seed, num_classes)
        self.alpha = float(alpha)
