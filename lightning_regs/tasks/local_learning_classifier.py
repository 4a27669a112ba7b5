"""An image classifier trained by supervised local learning (DGL / InfoPro / AugLocal heads, optional MAN)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn
from typing_extensions import override

from lightning_regs._compat import attached_trainer
from lightning_regs.batch import read_step
from lightning_regs.local_learning.builder import HeadName, Preset
from lightning_regs.local_learning.heads import TaskLoss
from lightning_regs.local_learning.mixin import LocalLearningMixin
from lightning_regs.tasks.image_classifier import ImageClassifier

__all__ = ["LocalLearningClassifier"]


class LocalLearningClassifier(LocalLearningMixin, ImageClassifier):
    """:class:`~lightning_regs.tasks.ImageClassifier` trained as K gradient-isolated modules.

    The backbone (any model with a layer sequence) is cut into ``K`` modules by ``split``; each module but
    the last gets a ``dgl`` or ``infopro`` auxiliary head (with ``man=True``, behind a momentum auxiliary
    network whose EMA the task moves once per optimizer step; ``man_momentum`` sets it). With
    ``head="auglocal"`` every layer is its own module (AugLocal's split, ``K = L - d``) and each gets an
    :class:`~lightning_regs.local_learning.auglocal.AugLocalHead` of pyramidally decaying depth. Metrics,
    logging and optimizer/scheduler arguments are those of ``ImageClassifier``; each local loss is logged
    as ``local/loss{j}``. Evaluation and prediction use the backbone alone.

    Non-finite inputs and losses follow :class:`~lightning_regs.tasks.ImageClassifier`'s rule: every batch's labels
    and inputs are checked before the forward, and every local loss and the final loss after the backward passes and
    before the optimizer step (one host read). With ``nonfinite="skip"`` a bad step makes no parameter change (the
    gradients are dropped before ``optimizer.step()`` and no MAN EMA moves; the learning-rate schedule still advances
    one step).
    ``ignore_index`` is refused: the auxiliary heads train on every row.

    Args:
        backbone: a model with ``layers`` and ``head`` (see :mod:`lightning_regs.models.layered`), or one that
            :func:`lightning_regs.models.layered` understands (``nn.Sequential``, torchvision ResNet, ...).
        num_classes: number of classes.
        K: number of gradient-isolated modules; by default ``len(split) + 1`` for explicit split points,
            ``L - d`` (set by ``d``) for ``auglocal``, else 4.
        split: ``auto`` (smallest peak activation memory), ``paper``, ``infopro_star`` or a list of
            layer names/indices after which a module ends. ``auglocal`` always splits every layer
            (leave ``auto`` or write ``every_layer``).
        head: ``dgl``, ``infopro`` or ``auglocal``.
        man: put a momentum auxiliary network (MAN) in front of each auxiliary head (DGL/InfoPro only); the task
            updates its EMA after each optimizer step (before it with ``preset="official"``). This is the whole method:
            no callback is needed.
        man_momentum: the EMA momentum of the MAN copies, in [0, 1] (the paper's 0.995); ``man=True`` only.
        d: AugLocal's aux depth: the first layer's aux net copies ``d`` later layers, and the last ``d``
            layers train with the classifier (paper: 2 for ResNet-32, 3 for ResNet-110).
        pyramid_coeff: AugLocal's linear depth decay ``tau`` (0.5 in the paper; 0 keeps depth ``d``).
        input_shape: shape of one input sample, used to size the heads and measure the auto split; ``None``
            (default) reads it from the first training sample at ``setup`` (and saves it in the checkpoint).
        lambdas: InfoPro's ``(recon_first, task_first, recon_last, task_last)``; default: the paper's
            preset for the CIFAR ResNet depth and K when there is one, else ``(5, 1, 0, 1)``.
        task_loss: InfoPro's task term, ``cross_entropy`` or ``contrast`` (supervised contrastive, the
            paper's best setting and the one its lambda presets were tuned for).
        head_norm: batch normalization in the auxiliary heads.
        gradient_clip_val: clip gradients to this norm/value (Trainer clipping is unavailable here).
        gradient_clip_algorithm: ``norm`` or ``value``.
        preset: ``library`` (default) or ``official``: where the library departs from the official code on
            purpose, take the official behaviour: InfoPro reconstructs the un-normalized image ``x · std + mean``
            (needs ``image_mean``/``image_std``; default: each sample min-max scaled to [0, 1]) and averages
            SupCon over every anchor (an anchor without a positive counts 0; default: over anchors with one);
            MAN's EMA and correction copies start from fresh random weights (default: copies of the tracked
            block) and their EMA moves after the backward, before the optimizer step (default: after it). DGL and
            AugLocal heads follow the official code under both presets. See ``docs/methods/local_learning.md``.
        image_mean, image_std: the per-channel ``Normalize`` of the inputs (``preset="official"`` with InfoPro).
        **kwargs: the :class:`~lightning_regs.tasks.ImageClassifier` arguments (optimizer, lr, momentum,
            nesterov, weight_decay, scheduler, warmup_epochs, milestones, gamma, min_lr_ratio,
            label_smoothing, ece_bins, nonfinite), with its defaults.

    Example::

        >>> from lightning_regs.models import resnet20
        >>> task = LocalLearningClassifier(resnet20(), 10, split=["s2b0"], head="infopro", input_shape=(3, 32, 32))
        >>> task.num_local_modules, sorted(task.aux_heads)
        (2, ['0'])
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        K: int | None = None,
        split: str | Sequence[int | str] = "auto",
        head: HeadName = "dgl",
        man: bool = False,
        d: int = 2,
        pyramid_coeff: float = 0.5,
        input_shape: Sequence[int] | None = None,
        lambdas: Sequence[float] | None = None,
        task_loss: TaskLoss = "cross_entropy",
        head_norm: bool = True,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: Literal["norm", "value"] = "norm",
        preset: Preset = "library",
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        man_momentum: float = 0.995,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("ignore_index") is not None:
            raise ValueError(
                f"LocalLearningClassifier: ignore_index={kwargs['ignore_index']} is not supported: the auxiliary heads "
                "train on every row's label. Drop the rows without a label from the training data instead."
            )
        super().__init__(backbone, num_classes, **kwargs)
        self._batch_idx: int | None = None
        self.setup_local_learning(
            backbone,
            num_classes,
            K=K,
            split=split,
            head=head,
            man=man,
            d=d,
            pyramid_coeff=pyramid_coeff,
            input_shape=input_shape,
            lambdas=lambdas,
            task_loss=task_loss,
            head_norm=head_norm,
            gradient_clip_val=gradient_clip_val,
            gradient_clip_algorithm=gradient_clip_algorithm,
            preset=preset,
            image_mean=image_mean,
            image_std=image_std,
            man_momentum=man_momentum,
        )

    #: The local heads train on each row's own target: MixUp(mode="loss") would be ignored by them, so it is refused.
    interpolates_mixed_loss = False

    @override
    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor] | None:
        step = read_step(batch)
        if self.check_batch(step, "train", batch_idx) is not None:  # nonfinite="skip" and a non-finite input
            self.skip_step(batch_idx, self._nonfinite_reason("batch['image']", "holds", step.image))
            return None
        self._batch_idx = batch_idx
        loss, logits, _ = self.local_training_step(
            step.image, step.target, final_loss=lambda z: self.compute_loss(z, batch)
        )
        if self._local_step_dropped:  # the mixin resets it at each step
            return None
        self._log_skipped(0.0)
        return self.log_training(loss, logits, step)

    @override
    def local_backward(
        self,
        image: torch.Tensor,
        target: torch.Tensor,
        label_smoothing: float = 0.0,
        backward: Callable[[torch.Tensor], None] | None = None,
        final_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """The mixin's forward and backward, then every loss checked for NaN and inf before the optimizer step.

        A non-finite loss is a named error naming it (``local/loss{j}`` or the final loss), or, with
        ``nonfinite="skip"``, drops the gradients so that the optimizer step that follows changes nothing.
        """
        loss, logits, local_losses = super().local_backward(image, target, label_smoothing, backward, final_loss)
        if backward is not None or attached_trainer(self) is None:  # outside a training step (memory measurements)
            return loss, logits, local_losses
        losses = torch.stack([*(value.float() for value in local_losses), loss.float()])
        names = [*(f"local/loss{j}" for j in range(len(local_losses))), "the final loss"]
        if not self.check_loss(losses, self._batch_idx, names):
            names = [name for name, ok in zip(names, torch.isfinite(losses).tolist(), strict=True) if not ok]
            self.optimizers().zero_grad(set_to_none=True)  # optimizer.step() then changes no parameter
            self._local_step_dropped = True  # and no MAN EMA moves
            self.skip_step(self._batch_idx, f"{', '.join(names)} not finite")
        return loss, logits, local_losses
