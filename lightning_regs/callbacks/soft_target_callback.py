"""The base of callbacks that rewrite ``batch["target"]`` into soft targets before each training step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_regs.batch import (
    HARD_TARGET,
    IMAGE,
    INDEXED_DATASET_HINT,
    MIX_LAMBDA,
    MIX_PARTNER,
    SAMPLE_TARGET,
    TARGET,
    class_ids,
)
from lightning_regs.functional._checks import check_int
from lightning_regs.functional.mixing import mix_targets
from lightning_regs.functional.outputs import logits_of
from lightning_regs.functional.soft_targets import target_distribution
from lightning_regs.modes import eval_mode

__all__ = ["SoftTargetCallback", "num_classes_of"]


class SoftTargetCallback(Callback):
    """Replace ``batch["target"]`` by soft targets ``(B, C)`` before each training step; keep the labels.

    A subclass implements one method, :meth:`refine_targets`, which receives the labels (int64 ids)
    and the current target as a class distribution and returns the new distribution (or ``None`` to
    leave the batch as it is). The base does the rest, the same way for every such callback:

    * the labels are read from ``batch["hard_target"]`` when an earlier callback wrote it, else from
      ``batch["target"]``, which must then hold int64 class ids ``(B,)`` (soft targets that come from
      the data, e.g. MixUp applied in the DataLoader, carry no labels and are refused);
    * the result goes to ``batch["target"]`` (float32 ``(B, C)``) and the labels to
      ``batch["hard_target"]``, written once by the first callback that softens the batch and never
      overwritten, so metrics keep measuring against the real labels.

    **Several such callbacks in one Trainer** run in the order of the Trainer's ``callbacks`` list, and
    each refines what the one before produced: with ``[ProgressiveSelfKD(), LabelSmoothing(0.1)]`` the
    target is ``(1 − ε)·((1 − α)·onehot(y) + α·p) + ε/C``; listed the other way round it is
    ``(1 − α)·((1 − ε)·onehot(y) + ε/C) + α·p``.

    **What your own ``training_step`` sees.** The batch contract holds: from the first softened step
    (:attr:`softening_starts`; epoch 1 for PS-KD) ``batch["target"]`` is float ``(B, C)``
    probabilities and the class ids are in ``batch["hard_target"]``. The loss must accept
    probabilities (``F.cross_entropy`` does); measure accuracy against
    :func:`lightning_regs.datamodules.class_ids` ``(batch)``, which is right whether or not a callback
    ran. The targets are rewritten in place rather than handed over in a new key so that an
    unmodified ``F.cross_entropy(logits, batch["target"])`` trains on them. A module written for
    int ids only (``logits.argmax(-1) == batch["target"]``, ``F.nll_loss``) would break or measure
    nonsense from that step on, so at the start of training the first such callback warns once,
    naming all of them, unless the module declares the class attribute ``accepts_soft_targets = True``
    (:class:`~lightning_regs.tasks.ImageClassifier` does).

    Args:
        num_classes: columns of the soft targets; by default the ``num_classes`` of the module, the DataModule
            or the training data set, else the width of the module's logits on the first batch.

    Example::

        >>> class Uniform(SoftTargetCallback):  # trains towards the uniform distribution
        ...     def refine_targets(self, trainer, pl_module, batch, labels, targets):
        ...         return torch.full_like(targets, 1.0 / targets.shape[1])
        >>> batch = {"target": torch.tensor([1, 0])}
        >>> Uniform(num_classes=2).soften(None, None, batch)
        >>> batch["target"].tolist(), batch["hard_target"].tolist()
        ([[0.5, 0.5], [0.5, 0.5]], [1, 0])
    """

    #: When ``batch["target"]`` first holds probabilities, as the soft-target warning words it.
    softening_starts: str = "the first training step"

    @property
    def softens_targets(self) -> bool:
        """Whether this callback puts ``(B, C)`` probabilities in ``batch["target"]`` (the soft-target warning)."""
        return True

    def __init__(self, num_classes: int | None = None) -> None:
        if num_classes is not None:
            check_int(type(self).__name__, "num_classes (or None to read it from the module)", num_classes, low=2)
        self.num_classes = num_classes
        self._range_checked = False
        self._logits_width: int | None = None
        self._warned = False

    def refine_targets(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Mapping[str, Any],
        labels: torch.Tensor,
        targets: torch.Tensor,
    ) -> torch.Tensor | None:
        """New targets ``(B, C)`` from the labels ``(B,)`` and the current targets ``(B, C)``; ``None``: unchanged."""
        raise NotImplementedError(f"{type(self).__name__} must implement refine_targets().")

    def resolve_num_classes(self, trainer: pl.Trainer | None, pl_module: pl.LightningModule | None) -> int:
        """``num_classes`` as given, else the module's or the DataModule's; a named error when none has it."""
        if self.num_classes is not None:
            return self.num_classes
        found = num_classes_of(trainer, pl_module) or self._logits_width
        if found is None:
            raise ValueError(
                f"{type(self).__name__} needs the number of classes: neither the LightningModule, the DataModule nor "
                "the training data set has an int `num_classes`, and the module's forward did not give (B, C) logits "
                f"for batch['{IMAGE}']. Pass {type(self).__name__}(num_classes=C)."
            )
        return found

    def checked_labels(
        self, trainer: pl.Trainer | None, pl_module: pl.LightningModule | None, batch: Any
    ) -> torch.Tensor:
        """The batch's class ids (:func:`read_labels`), range-checked once against the number of classes."""
        labels = read_labels(batch, type(self).__name__)
        if self.num_classes is None and self._logits_width is None and num_classes_of(trainer, pl_module) is None:
            self._logits_width = logits_width(pl_module, batch)
        num_classes = self.resolve_num_classes(trainer, pl_module)
        if not self._range_checked:  # once: a device sync, and F.one_hot's own error names nothing
            if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(
                    f"{type(self).__name__}: the labels hold class ids in [{int(labels.min())}, {int(labels.max())}] "
                    f"but there are {num_classes} classes. Soft targets need every row labelled with a 0-based id "
                    "(unlabelled rows, e.g. target -1 in generalized category discovery, cannot be softened)."
                )
            self._range_checked = True
        return labels

    def soften(self, trainer: pl.Trainer | None, pl_module: pl.LightningModule | None, batch: Any) -> None:
        """Apply :meth:`refine_targets` to ``batch`` in place (what every training batch goes through).

        After an input-rewriting callback mixed the batch (``batch["sample_target"]`` present), the rows' own
        targets are refined and mixed again with the same partners and ``λ``, so the order of the callbacks in the
        Trainer does not change the target.
        """
        labels = self.checked_labels(trainer, pl_module, batch)
        num_classes = self.resolve_num_classes(trainer, pl_module)
        mixed = SAMPLE_TARGET in batch
        current = batch[SAMPLE_TARGET] if mixed else batch[TARGET]
        refined = self.refine_targets(trainer, pl_module, batch, labels, target_distribution(current, num_classes))
        if refined is None:
            return
        if refined.shape != (labels.shape[0], num_classes):
            raise ValueError(
                f"{type(self).__name__}.refine_targets returned shape {tuple(refined.shape)}; expected "
                f"({labels.shape[0]}, {num_classes})."
            )
        if HARD_TARGET not in batch:
            batch[HARD_TARGET] = labels
        if mixed:
            batch[SAMPLE_TARGET] = refined
            refined = mix_targets(refined, batch[MIX_PARTNER], batch[MIX_LAMBDA])
        batch[TARGET] = refined

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.warn_unless_soft_targets_accepted(trainer, pl_module)

    def warn_unless_soft_targets_accepted(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Warn once that ``batch["target"]`` becomes ``(B, C)`` unless the module sets ``accepts_soft_targets``."""
        softening = [c for c in trainer.callbacks if isinstance(c, SoftTargetCallback) and c.softens_targets] or [self]
        # One warning per run, from the first such callback, naming all of them.
        if self._warned or getattr(pl_module, "accepts_soft_targets", False) or softening[0] is not self:
            return
        self._warned = True
        who = ", ".join(f"{type(c).__name__} (from {c.softening_starts})" for c in softening)
        rank_zero_warn(
            f"{who} will replace batch['{TARGET}'] by float (B, C) class probabilities; the class ids are then in "
            f"batch['{HARD_TARGET}'] of dict batches (an [x, y] list batch keeps none), which "
            "`lightning_regs.datamodules.class_ids(batch)` returns either way. Give "
            "your loss the probabilities (F.cross_entropy accepts them) and measure accuracy against class_ids(batch). "
            f"Set `accepts_soft_targets = True` on {type(pl_module).__name__} to silence this warning."
        )

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.soften(trainer, pl_module, batch)


def read_labels(batch: Any, who: str) -> torch.Tensor:
    """The int64 labels of a dict batch (:func:`~lightning_regs.batch.class_ids`), or an error naming ``who``."""
    if not isinstance(batch, Mapping) or TARGET not in batch:
        kind = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise TypeError(
            f"{who} rewrites batch['{TARGET}'], but the batch is {kind}. Yield dict batches with '{TARGET}' "
            f"(int64 class ids), as every lightning_regs DataModule does: {INDEXED_DATASET_HINT}."
        )
    try:
        labels = class_ids(batch)
    except ValueError:  # soft targets from the data: named below, with what the callback needs
        labels = batch[TARGET]
    if labels.is_floating_point() or labels.dim() != 1:
        raise ValueError(
            f"{who} needs hard class ids in batch['{TARGET}'] (int64, shape (B,)), got dtype {labels.dtype} and "
            f"shape {tuple(labels.shape)}. Targets that are already soft in the data (MixUp, CutMix, label "
            "smoothing applied in the DataLoader) carry no labels and cannot be refined: apply those as "
            "callbacks after this one, or not at all."
        )
    return labels


def num_classes_of(trainer: pl.Trainer | None, pl_module: pl.LightningModule | None) -> int | None:
    """The int ``num_classes`` of the module, else of the DataModule, else of the training data set (``None``).

    The training data set has one when it is an :class:`~lightning_regs.datamodules.IndexedDataset` over a data
    set with ``classes`` (torchvision's do).
    """
    loader = getattr(trainer, "train_dataloader", None) if trainer is not None else None
    for owner in (pl_module, getattr(trainer, "datamodule", None), getattr(loader, "dataset", None)):
        value = getattr(owner, "num_classes", None)  # None too from a DataModule that knows it only after setup
        if isinstance(value, int):
            return value
    return None


def logits_width(pl_module: pl.LightningModule | None, batch: Any) -> int | None:
    """The number of logits ``pl_module`` gives one image of ``batch``, by one eval-mode forward; ``None`` if it can't.

    The forward runs without gradients, in eval mode (BatchNorm statistics untouched) and in a forked RNG, so
    training is the same as without it. The module may return the logits, a dict with ``"logits"`` or an object
    with ``.logits`` (:func:`~lightning_regs.functional.outputs.logits_of`).
    """
    image = batch.get(IMAGE) if isinstance(batch, Mapping) else None
    if pl_module is None or not isinstance(image, torch.Tensor):
        return None
    try:
        with torch.random.fork_rng(devices=[]), eval_mode(pl_module), torch.no_grad():
            logits = logits_of(pl_module(image[:1]))  # logits, a dict with them or an object with .logits
    except Exception:  # no forward, one that needs more than the image, or no logits: the caller names num_classes
        return None
    return int(logits.shape[-1]) if logits.dim() == 2 else None
