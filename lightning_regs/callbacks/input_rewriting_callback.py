"""The base of callbacks that rewrite a training batch's inputs (MixUp, CutMix) and mix its targets with them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_regs.batch import (
    CLEAN_IMAGE,
    HARD_TARGET,
    IMAGE,
    INDEXED_DATASET_HINT,
    MIX_LAMBDA,
    MIX_PARTNER,
    SAMPLE_TARGET,
    TARGET,
)
from lightning_regs.callbacks.soft_target_callback import SoftTargetCallback
from lightning_regs.functional._checks import check_number
from lightning_regs.functional.mixing import mix_targets
from lightning_regs.functional.soft_targets import target_distribution

__all__ = ["InputRewritingCallback", "Rewrite"]

MixMode = Literal["targets", "loss"]


class Rewrite(NamedTuple):
    """What :meth:`InputRewritingCallback.rewrite` returns: the new inputs and how each row's target mixes.

    ``partner[i]`` is the batch row whose sample was mixed into row ``i`` with weight ``1 − lam[i]``; leave both
    ``None`` when the rewrite keeps every row's own target (an augmentation that mixes nothing).
    """

    image: torch.Tensor
    partner: torch.Tensor | None = None
    lam: torch.Tensor | None = None


class InputRewritingCallback(SoftTargetCallback):
    """Rewrite ``batch["image"]`` before each training step and mix the targets to match; draws are checkpointed.

    A subclass implements :meth:`rewrite`, which returns the new inputs and, for a mixing, each row's partner row
    and own share ``λ`` (:class:`Rewrite`); it draws from the ``rng`` it is handed, a ``numpy.random.Generator``
    seeded from ``(seed, number of batches seen)``: the count is the checkpointed state, so a resumed run draws what
    the uninterrupted run draws, and a batch's draws do not depend on earlier batches' sizes (ranks with uneven last
    batches still agree on whether a batch is mixed, and on its λ). The base does the rest, the same way for every
    such callback:

    * ``batch["clean_image"]`` keeps the inputs as they came, ``batch["image"]`` gets the rewritten ones, and
      ``batch["mix_partner"]`` / ``batch["mix_lambda"]`` describe the mixing;
    * ``mode="targets"`` (default): each row's own target distribution goes to ``batch["sample_target"]`` and
      ``batch["target"]`` becomes ``λ_i·t_i + (1 − λ_i)·t_{p(i)}`` (class ids stay in ``batch["hard_target"]``);
      ``mode="loss"``: ``batch["target"]`` stays as it is and the module interpolates its loss,
      ``λ·ℓ(y_i) + (1 − λ)·ℓ(y_{p(i)})`` (:func:`~lightning_regs.functional.interpolate_loss`), for losses that take
      class ids only; the module declares ``interpolates_mixed_loss = True``
      (:class:`~lightning_regs.tasks.ImageClassifier` does), else training stops with a named error.

    **Order.** Target-only callbacks (:class:`~lightning_regs.callbacks.SoftTargetCallback`: label smoothing, PS-KD)
    listed before or after an input-rewriting callback give the same target: after a mixing they refine
    ``batch["sample_target"]`` (each row's own target, keyed by its own ``index``) and the mixing is applied again.
    One mixing callback per Trainer (use :class:`~lightning_regs.callbacks.MixUpCutMix` to switch); rewrites that mix
    nothing (``mixes_targets = False``: an augmentation such as a flip) may stand beside it.

    **DDP.** Every rank draws from the same seed, so a global batch has one ``λ`` (per batch) and rows are paired
    with rows of the same rank: the pairing is per rank, as in timm and torchvision (a one-process run pairs over
    the whole global batch, so the two do not compute the same step).

    Args:
        mode: ``"targets"`` (mix the targets) or ``"loss"`` (the module interpolates its loss).
        prob: the probability that a training batch is rewritten at all.
        seed: seed of the private generator.
        num_classes: columns of the mixed targets; by default the module's, the DataModule's or the data set's.

    Example::

        >>> class Reverse(InputRewritingCallback):  # each row becomes the mean of itself and the row mirrored
        ...     def rewrite(self, trainer, pl_module, batch, rng):
        ...         partner = torch.arange(len(batch["image"])).flip(0)
        ...         lam = torch.full((len(partner),), 0.5)
        ...         return Rewrite(0.5 * batch["image"] + 0.5 * batch["image"][partner], partner, lam)
        >>> batch = {"image": torch.tensor([[0.0], [2.0]]), "target": torch.tensor([0, 1])}
        >>> Reverse(num_classes=2).rewrite_batch(None, None, batch)
        >>> batch["image"].flatten().tolist(), batch["target"].tolist(), batch["hard_target"].tolist()
        ([1.0, 1.0], [[0.5, 0.5], [0.5, 0.5]], [0, 1])
    """

    #: Declares that this callback changes ``batch["image"]``.
    rewrites_inputs: bool = True
    #: Declares that :meth:`rewrite` mixes rows (returns ``partner`` and ``lam``); PS-KD then predicts on
    #: ``batch["clean_image"]``. Set ``False`` for a rewrite that keeps every row's own sample and target.
    mixes_targets: bool = True

    def __init__(
        self, mode: MixMode = "targets", prob: float = 1.0, seed: int = 0, num_classes: int | None = None
    ) -> None:
        super().__init__(num_classes)
        if mode not in ("targets", "loss"):
            raise ValueError(f"mode must be 'targets' (mix the targets) or 'loss' (interpolate the loss); got {mode!r}")
        check_number(type(self).__name__, "prob (the share of training batches rewritten)", prob, low=0, high=1)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
        self.mode = mode
        self.prob = float(prob)
        self.seed = seed
        self.batches_seen = 0

    @property
    @override
    def softens_targets(self) -> bool:
        return self.mode == "targets" and self.mixes_targets

    def next_generator(self) -> np.random.Generator:
        """The generator of the next training batch: seeded from ``(seed, batches seen)``, then the count moves on."""
        rng = np.random.default_rng([self.seed, self.batches_seen])
        self.batches_seen += 1
        return rng

    def rewrite(
        self, trainer: pl.Trainer | None, pl_module: pl.LightningModule | None, batch: Mapping[str, Any],
        rng: np.random.Generator,
    ) -> Rewrite | None:  # fmt: skip
        """The rewritten inputs of ``batch`` (and the mixing of its rows), drawn from ``rng``; ``None``: unchanged."""
        raise NotImplementedError(f"{type(self).__name__} must implement rewrite().")

    @override
    def refine_targets(self, *args: Any) -> None:  # the targets follow from rewrite()'s mixing
        return None

    @property
    @override
    def state_key(self) -> str:
        return type(self).__name__

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "batches_seen": self.batches_seen}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict["seed"] != self.seed:
            rank_zero_warn(
                f"{type(self).__name__}: the checkpoint was trained with seed={state_dict['seed']}, this callback has "
                f"seed={self.seed}; the checkpoint's seed is kept: the resumed run draws what the run would have."
            )
        self.seed = int(state_dict["seed"])
        self.batches_seen = int(state_dict["batches_seen"])

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        mixing = [
            c for c in trainer.callbacks if getattr(c, "rewrites_inputs", False) and getattr(c, "mixes_targets", True)
        ]
        if len(mixing) > 1:
            raise ValueError(
                f"The Trainer has {len(mixing)} mixing callbacks ({', '.join(type(c).__name__ for c in mixing)}); "
                "a batch can be mixed once. Keep one; to switch between MixUp and CutMix use "
                "MixUpCutMix(mixup_alpha, cutmix_alpha, switch_prob)."
            )
        if self.mode == "loss" and self.mixes_targets:
            if not getattr(pl_module, "interpolates_mixed_loss", False):
                raise ValueError(
                    f"{type(self).__name__}(mode='loss') leaves batch['{TARGET}'] as class ids and mixes the inputs: "
                    f"the module must interpolate its loss with batch['{MIX_PARTNER}'] and batch['{MIX_LAMBDA}'] "
                    "(lightning_regs.functional.interpolate_loss) and declare `interpolates_mixed_loss = True`, as "
                    f"ImageClassifier does. {type(pl_module).__name__} does not: use mode='targets' (the default) if "
                    "its loss accepts (B, C) probabilities."
                )
            return
        super().on_train_start(trainer, pl_module)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.rewrite_batch(trainer, pl_module, batch)

    def rewrite_batch(self, trainer: pl.Trainer | None, pl_module: pl.LightningModule | None, batch: Any) -> None:
        """Apply :meth:`rewrite` to ``batch`` in place and mix its targets (what every training batch goes through).

        Dict batches get the whole contract (``clean_image``, ``mix_partner``, ``mix_lambda``, ``sample_target``);
        an ``[x, y]`` list (what a ``DataLoader`` over ``(x, y)`` pairs yields) gets the mixed inputs and targets
        in place, and nothing else: ``mode="loss"`` and PS-KD need dict batches.
        """
        pair = isinstance(batch, list) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch)
        if pair and self.mode == "loss":
            raise TypeError(
                f"{type(self).__name__}(mode='loss') writes each row's partner and λ into the batch, which an [x, y] "
                f"list cannot carry: use mode='targets', or dict batches ({INDEXED_DATASET_HINT})."
            )
        if not pair and (not isinstance(batch, dict) or IMAGE not in batch or TARGET not in batch):
            kind = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise TypeError(
                f"{type(self).__name__} rewrites batch['{IMAGE}'] and batch['{TARGET}'] (or the two tensors of an "
                f"[x, y] list batch), but the batch is {kind}. Yield dict batches with '{IMAGE}' and '{TARGET}', as "
                f"every lightning_regs DataModule does: {INDEXED_DATASET_HINT}."
            )
        view = {IMAGE: batch[0], TARGET: batch[1]} if pair else batch
        rng = self.next_generator()
        if self.prob < 1.0 and rng.random() >= self.prob:
            return
        self._rewrite(trainer, pl_module, view, rng)
        if pair:
            batch[0], batch[1] = view[IMAGE], view[TARGET]

    def _rewrite(
        self, trainer: pl.Trainer | None, pl_module: pl.LightningModule | None, batch: dict, rng: np.random.Generator
    ) -> None:
        image = batch[IMAGE]
        if not image.is_floating_point():
            raise TypeError(
                f"{type(self).__name__} blends inputs, but batch['{IMAGE}'] holds {image.dtype}: convert images to "
                "float (e.g. torchvision's v2.ToDtype(torch.float32, scale=True)) before they reach the Trainer."
            )
        result = self.rewrite(trainer, pl_module, batch, rng)
        if result is None:
            return
        if result.image.shape != image.shape:
            raise ValueError(
                f"{type(self).__name__}.rewrite returned inputs of shape {tuple(result.image.shape)} for a batch of "
                f"shape {tuple(image.shape)}; a rewrite keeps the shape."
            )
        batch.setdefault(CLEAN_IMAGE, image)  # the inputs as they came, also after another rewrite
        batch[IMAGE] = result.image
        if result.partner is None:
            return
        partner = result.partner.to(image.device)
        lam = result.lam.to(image.device) if result.lam is not None else torch.ones(len(partner), device=image.device)
        batch[MIX_PARTNER], batch[MIX_LAMBDA] = partner, lam
        if self.mode == "loss":
            return
        target = batch[TARGET]
        if target.is_floating_point() and target.dim() == 2:  # soft: from an earlier callback, or one-hot data
            own = target.float()
        else:
            labels = self.checked_labels(trainer, pl_module, batch)
            own = target_distribution(labels, self.resolve_num_classes(trainer, pl_module))
            batch.setdefault(HARD_TARGET, labels)
        batch[SAMPLE_TARGET] = own
        batch[TARGET] = mix_targets(own, partner, lam)
