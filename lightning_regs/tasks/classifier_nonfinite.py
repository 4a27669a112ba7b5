"""What a classifier does with labels out of range and NaN or inf: check each batch and loss, skip or refuse
(:class:`NonFiniteSteps`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_regs._compat import attached_trainer
from lightning_regs.batch import StepBatch
from lightning_regs.tasks.input_checks import (
    NONFINITE_FIX,
    NonFinite,
    describe_nonfinite,
    drop_skipped_gradients,
    label_problem,
    row_count,
    target_flags,
)

__all__ = ["NonFiniteSteps"]


class NonFiniteSteps:
    """Mixin of :class:`~lightning_regs.tasks.ImageClassifier` (before ``LightningModule`` in the bases): the checks
    of its "nothing silent" rule.

    Every batch has its labels checked (a named error); a non-finite training input or loss is a named error, or
    under ``nonfinite="skip"`` a skipped step (agreed across ranks, its gradients dropped before the optimizer step,
    counted in ``train/skipped_nonfinite`` and warned about); evaluation rows with non-finite inputs are left out.
    The host sets ``num_classes``, ``task_settings`` (``nonfinite``, ``ignore_index``), ``_skipped_warnings`` and
    ``_dropped_rows`` in its ``__init__``.
    """

    num_classes: int
    task_settings: Any
    _skipped_warnings: int
    _dropped_rows: int

    def check_batch(
        self, step: StepBatch, stage: str, batch_idx: int | None, nonfinite: NonFinite | None = None
    ) -> torch.Tensor | None:
        """Check ``step``'s labels and inputs with one host read; what to do with rows whose input is not finite.

        Labels out of range (and soft targets that are not distributions) are a named error in every stage. In
        training, a non-finite input is a named error (``nonfinite="raise"``) or returns a 0-d ``False`` tensor
        (``"skip"``: the caller skips the step); in evaluation it returns the bool ``(B,)`` mask of the rows to keep
        (finite inputs, labels other than ``ignore_index``). ``None``: keep everything.
        """
        owner, rows = type(self).__name__, row_count(step.image)
        where = f"{stage} batch {batch_idx}" if batch_idx is not None else f"a {stage} batch"
        ignore = self.task_settings.ignore_index
        flags = target_flags(owner, where, step.target, step.labels, self.num_classes, ignore, rows)
        image = step.image
        if stage == "train":
            finite = torch.isfinite(image).all() if image.is_floating_point() else image.new_ones((), dtype=torch.bool)
            if (nonfinite or self.task_settings.nonfinite) == "skip":
                finite = self._agree_across_ranks(finite)
            read = torch.stack([*flags, finite]).tolist()
        else:
            finite_rows = torch.isfinite(image.flatten(1)).all(1) if image.is_floating_point() else None
            keep = finite_rows
            if ignore is not None and not step.target.is_floating_point():
                labelled = step.labels != ignore
                keep = labelled if keep is None else keep & labelled
            read = torch.stack([*flags, keep.all() if keep is not None else flags[0]]).tolist()
        if not all(read[: len(flags)]):
            raise ValueError(label_problem(owner, where, step.target, step.labels, self.num_classes, ignore))
        if stage == "train":
            if read[-1]:
                return None
            if (nonfinite or self.task_settings.nonfinite) == "raise":
                raise ValueError(
                    f"{owner}: training step {self.global_step} (batch {batch_idx}) has non-finite values in "
                    f"batch['image'] ({describe_nonfinite(image)}); the step would turn every weight into NaN. Fix: "
                    f"{NONFINITE_FIX}."
                )
            return image.new_zeros((), dtype=torch.bool)
        self._dropped_rows = 0
        if read[-1]:
            return None
        if finite_rows is not None:
            self._dropped_rows = int((~finite_rows).sum())
        return keep

    def _agree_across_ranks(self, finite: torch.Tensor) -> torch.Tensor:
        # Under DDP a rank that skips alone would leave the others waiting in the gradient all-reduce.
        trainer = attached_trainer(self)
        if trainer is None or trainer.world_size == 1:
            return finite
        bad = trainer.strategy.reduce((~finite).float(), reduce_op="sum")
        return bad == 0

    def check_loss(self, loss: torch.Tensor, batch_idx: int | None, names: Sequence[str] = ()) -> bool:
        """``True`` when ``loss`` is finite; else a named error (``nonfinite="raise"``), or ``False`` (``"skip"``).

        ``loss`` may stack several losses, ``names`` naming each for the message. One host read (all-reduced under
        DDP with ``"skip"``, so every rank skips together).
        """
        loss = loss.detach()
        finite = torch.isfinite(loss).all()
        skip = self.task_settings.nonfinite == "skip"
        if skip:
            finite = self._agree_across_ranks(finite)
        if bool(finite):
            return True
        if not skip:
            what = "loss"
            if names:
                bad = [name for name, ok in zip(names, torch.isfinite(loss).flatten().tolist(), strict=True) if not ok]
                what = f"loss ({', '.join(bad)})"
            raise ValueError(
                f"{type(self).__name__}: training step {self.global_step} (batch {batch_idx}) has a non-finite "
                f"{what}: {describe_nonfinite(loss)}, although its inputs are finite: the model diverged "
                "or a loss term overflowed. Lower the learning rate, clip gradients (Trainer(gradient_clip_val=1.0)) "
                f"or find it with Trainer(detect_anomaly=True); {NONFINITE_FIX}."
            )
        return False

    def skip_step(self, batch_idx: int | None, reason: str) -> None:
        """Count (``train/skipped_nonfinite``) and warn about a training step skipped under ``nonfinite="skip"``."""
        self._log_skipped(1.0)
        self._skipped_warnings += 1
        if self._skipped_warnings <= 5:
            rank_zero_warn(
                f"{type(self).__name__}(nonfinite='skip'): skipped training step {self.global_step} (batch "
                f"{batch_idx}): {reason}. Skipped steps are counted in train/skipped_nonfinite"
                + (" (no further warnings)." if self._skipped_warnings == 5 else ".")
            )

    def _nonfinite_reason(self, what: str, verb: str, value: torch.Tensor) -> str:
        """``"<what> <verb> <the non-finite values>"``, or, where this rank's are finite, that another rank's were."""
        found = describe_nonfinite(value)
        if found:
            return f"{what} {verb} {found}"
        return f"{what} of another process held NaN or inf (every rank skips the step together)"

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        drop_skipped_gradients(self, optimizer)

    def _log_skipped(self, value: float) -> None:
        if self.task_settings.nonfinite == "skip" and attached_trainer(self) is not None:
            self.log("train/skipped_nonfinite", value, on_step=False, on_epoch=True, reduce_fx="sum", batch_size=1)
