"""MixUp and CutMix, switched per batch or per sample: the callback :class:`MixUp` and :class:`CutMix` specialize."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from typing_extensions import override

from lightning_regs.batch import IMAGE
from lightning_regs.callbacks.input_rewriting_callback import InputRewritingCallback, MixMode, Rewrite
from lightning_regs.functional._checks import check_bool, check_number
from lightning_regs.functional.mixing import box_masks, cutmix_boxes, draw_mix, mix_inputs

__all__ = ["MixUpCutMix"]


class MixUpCutMix(InputRewritingCallback):
    """MixUp (Zhang et al., ICLR 2018) or CutMix (Yun et al., ICCV 2019) on every training batch, as timm's ``Mixup``.

    Each row ``i`` is paired with row ``p(i)`` of a random permutation of the batch (any batch size, odd and 1
    included: a row paired with itself is unchanged) and ``λ ~ Beta(α, α)`` is drawn once per batch or, with
    ``per_sample=True``, once per row. A MixUp row becomes ``λ·x_i + (1 − λ)·x_{p(i)}``; a CutMix row gets the
    pixels of ``x_{p(i)}`` inside a box of area ``(1 − λ)·H·W`` centred uniformly on the image and clipped to it
    (one box for the whole batch, as the official code and torchvision; one per row with ``per_sample=True``),
    and its λ becomes the share of pixels left (the correction of timm's ``correct_lam`` and torchvision's
    ``v2.CutMix``). With both α positive, a batch (or a row) is CutMix with probability ``switch_prob``. Targets
    mix with the same λ (see :class:`~lightning_regs.callbacks.InputRewritingCallback` for ``mode``, the order
    with label smoothing and PS-KD, DDP and resume).

    Args:
        mixup_alpha: MixUp's α (0: no MixUp). timm's default 0.8; 0.2 on ImageNet, 1.0 on CIFAR in the papers.
        cutmix_alpha: CutMix's α (0: no CutMix); 1.0 in the CutMix paper.
        switch_prob: with both α positive, the probability of CutMix (timm's 0.5).
        per_sample: one λ (and one switch, and one CutMix box) per row instead of per batch.
        mode: ``"targets"`` (mix the targets) or ``"loss"`` (the module interpolates its loss over class ids).
        prob: the probability that a batch is mixed at all (timm's ``mixup_prob``).
        seed: seed of the private generator (checkpointed).
        num_classes: columns of the mixed targets; by default the module's or the DataModule's.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_regs.datamodules import DigitsDataModule
        >>> from lightning_regs.models import SmallCNN
        >>> from lightning_regs.tasks import ImageClassifier
        >>> trainer = Trainer(max_steps=2, callbacks=[MixUpCutMix(0.8, 1.0)], logger=False, enable_checkpointing=False,
        ...                   enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        >>> trainer.fit(ImageClassifier(SmallCNN(width=8), num_classes=10), DigitsDataModule())
        >>> trainer.global_step
        2
    """

    def __init__(
        self,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        switch_prob: float = 0.5,
        per_sample: bool = False,
        mode: MixMode = "targets",
        prob: float = 1.0,
        seed: int = 0,
        num_classes: int | None = None,
    ) -> None:
        owner = type(self).__name__
        for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            check_number(owner, f"{name} (0 turns it off)", value, low=0)
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise ValueError("mixup_alpha and cutmix_alpha are both 0: nothing would be mixed. Set one positive.")
        check_number(owner, "switch_prob", switch_prob, low=0, high=1)
        check_bool(owner, "per_sample", per_sample)
        super().__init__(mode=mode, prob=prob, seed=seed, num_classes=num_classes)
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.switch_prob = float(switch_prob)
        self.per_sample = bool(per_sample)

    @override
    def rewrite(
        self, trainer: pl.Trainer | None, pl_module: pl.LightningModule | None, batch: Mapping[str, Any],
        rng: np.random.Generator,
    ) -> Rewrite:  # fmt: skip
        image = batch[IMAGE]
        draw = draw_mix(len(image), rng, self.mixup_alpha, self.cutmix_alpha, self.switch_prob, self.per_sample)
        if not draw.cutmix.any():
            return Rewrite(mix_inputs(image, draw.partner, draw.lam), draw.partner, draw.lam)
        if image.dim() != 4:
            raise ValueError(
                f"CutMix cuts boxes out of images (B, C, H, W); batch['{IMAGE}'] has shape {tuple(image.shape)}. Use "
                "MixUp for other inputs."
            )
        height, width = image.shape[-2:]
        cut = draw.cutmix.to(image.device)
        drawn = draw.lam.to(image.device)
        # one box for the batch (as the official loop and torchvision), or one per row with per_sample=True
        boxes = cutmix_boxes(draw.lam if self.per_sample else draw.lam[:1], height, width, rng)
        masks = box_masks(boxes.expand(len(image), 4).to(image.device), height, width)
        lam = torch.where(cut, masks.mean(dim=(1, 2, 3)), drawn)  # CutMix rows: the share of pixels left
        weight = torch.where(cut[:, None, None, None], masks, drawn[:, None, None, None])
        return Rewrite(mix_inputs(image, draw.partner, weight), draw.partner, lam)
