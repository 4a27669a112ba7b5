"""A classifier's metrics: training accuracy (MixUp/CutMix-aware), and validation and test loss, accuracy and
calibration over the rows that count (:class:`ClassifierMetrics`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError
from typing_extensions import override

from lightning_regs.batch import MIX_LAMBDA, MIX_PARTNER, StepBatch, read_step
from lightning_regs.functional.mixing import mixed_accuracy
from lightning_regs.tasks.input_checks import report_nonfinite_inputs, row_count, select_rows

__all__ = ["ClassifierMetrics", "classification_metrics"]


def classification_metrics(num_classes: int, ece_bins: int) -> nn.ModuleDict:
    """``train_acc`` and the ``val``/``test`` accuracy and expected calibration error (``ece_bins`` bins, L1)."""
    return nn.ModuleDict(
        {
            # the mean of mixed_accuracy's per-row credit: plain accuracy on unmixed batches
            "train_acc": MeanMetric(),
            "val_acc": MulticlassAccuracy(num_classes, average="micro"),
            "val_ece": MulticlassCalibrationError(num_classes, n_bins=ece_bins, norm="l1"),
            "test_acc": MulticlassAccuracy(num_classes, average="micro"),
            "test_ece": MulticlassCalibrationError(num_classes, n_bins=ece_bins, norm="l1"),
        }
    )


class ClassifierMetrics:
    """Mixin of :class:`~lightning_regs.tasks.ImageClassifier` (before ``LightningModule`` in the bases): what it
    logs in training, validation and test.

    The host sets ``metrics`` (:func:`classification_metrics`), ``task_settings`` (``ignore_index``),
    ``_dropped_rows`` and ``_warned_nonfinite_stages`` in its ``__init__``, and provides ``check_batch`` and
    ``_forward_step``.
    """

    metrics: nn.ModuleDict
    task_settings: Any
    _dropped_rows: int
    _warned_nonfinite_stages: set[str]

    def log_training(self, loss: torch.Tensor, logits: torch.Tensor, batch: Any | StepBatch) -> dict[str, torch.Tensor]:
        """Log ``train/loss`` and ``train/acc`` and return ``{"loss", "logits"}`` (logits detached) for callbacks.

        Under MixUp/CutMix ``train/acc`` credits both labels of a mixed row in proportion ``λ``
        (:func:`~lightning_regs.functional.mixed_accuracy`); on unmixed batches it is the plain accuracy.
        """
        logits = logits.detach()
        step = batch if isinstance(batch, StepBatch) else read_step(batch)
        mixing = step.batch if isinstance(step.batch, Mapping) and MIX_PARTNER in step.batch else {}
        credit = mixed_accuracy(logits, step.labels, mixing.get(MIX_PARTNER), mixing.get(MIX_LAMBDA))
        ignore = self.task_settings.ignore_index
        if ignore is not None and not step.target.is_floating_point():
            self.metrics["train_acc"](credit, (step.labels != ignore).to(credit.dtype))  # ignored rows weigh 0
        else:
            self.metrics["train_acc"](credit)
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log("train/acc", self.metrics["train_acc"], on_step=False, on_epoch=True)
        return {"loss": loss, "logits": logits}

    def evaluation_rows(self, batch: Any, stage: str, batch_idx: int | None) -> StepBatch | None:
        """The batch's rows that count in ``stage``'s metrics (see the class docstring); ``None`` when there are none.

        Checks the labels (a named error), leaves out rows with non-finite inputs or an ``ignore_index`` label, and
        logs ``<stage>/nonfinite_inputs`` (on every step: under DDP every rank logs the same metrics).
        """
        step = read_step(batch)
        keep = self.check_batch(step, stage, batch_idx)
        report_nonfinite_inputs(
            self, self._warned_nonfinite_stages, stage, self._dropped_rows, row_count(step.image) or 0,
            f"{stage} batch {batch_idx}", f"every {stage} metric",
        )  # fmt: skip
        if keep is None:
            return step
        return select_rows(step, keep) if bool(keep.any()) else None

    def _evaluate(self, batch: Any, stage: str, batch_idx: int | None = None) -> None:
        step = self.evaluation_rows(batch, stage, batch_idx)
        if step is not None:
            logits, loss = self._forward_step(step)
            probabilities = logits.float().softmax(dim=-1)
            self.metrics[f"{stage}_acc"](probabilities, step.labels)
            self.metrics[f"{stage}_ece"](probabilities, step.labels)
            rows = len(step.labels)
        else:  # no row counts: nothing is added, but every metric is still logged (DDP)
            loss, rows = torch.zeros((), device=self.device), 0
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=rows)
        self.log(f"{stage}/acc", self.metrics[f"{stage}_acc"], prog_bar=stage == "val")
        self.log(f"{stage}/ece", self.metrics[f"{stage}_ece"])

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val", batch_idx)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test", batch_idx)
