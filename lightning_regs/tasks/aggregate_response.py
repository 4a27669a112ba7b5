"""Train instance-level predictors from aggregate responses (Javanmard et al., ICLR 2024): bag to instance loss."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_regs._compat import attached_trainer
from lightning_regs.batch import BAG_ID, INDEX, read_inputs, unpack_batch
from lightning_regs.distributed import gather_unique_by_index
from lightning_regs.functional.aggregate import BagWeights, aggregate_response_terms
from lightning_regs.functional.outputs import logits_of
from lightning_regs.tasks.input_checks import (
    NONFINITE_FIX,
    NonFinite,
    check_nonfinite_option,
    describe_nonfinite,
    drop_skipped_gradients,
    label_problem,
    report_nonfinite_inputs,
    skipped_step_output,
    target_flags,
)
from lightning_regs.tasks.optim import OptimizerName, SchedulerName, recipe_optimizers
from lightning_regs.tasks.settings import own_settings
from lightning_regs.tasks.sharding import shard_under_model_parallel
from lightning_regs.trusted_loading import TrustedCheckpointLoading

__all__ = ["AggregateResponseTask"]


class AggregateResponseTask(TrustedCheckpointLoading, pl.LightningModule):
    """Fit ``model`` on bags of instances labelled only by their aggregate response; score it on single instances.

    Training batches are instance rows with ``bag_id`` and, as ``target``, each row's bag response (a mean for
    ``loss="mse"``, class proportions for ``loss="ce"``), whole bags per batch (the aggregate DataModules, or
    :func:`~lightning_regs.datamodules.bag_sampler.bag_dataloader` over your data). The loss is
    :func:`~lightning_regs.functional.aggregate.aggregate_response_loss`: ``L_bag + ρ·R`` (squared loss) or
    ``(1 − ρ)·L_bag + ρ·L_ins`` (label proportions), ρ = 0 the bag-level loss, ρ = 1 the instance-level loss. It
    logs ``train/loss``, ``train/bag_loss``, ``train/instance_loss`` and ``train/regularizer`` (``L_ins − L̃_bag``:
    the within-bag spread ``R`` for squared loss).

    Validation and test batches are single instances with their own label in ``target`` (a float for ``"mse"``, a
    class id for ``"ce"``): the task logs ``val/mse`` (``test/mse``) or ``val/acc`` (``test/acc``), computed once over
    the whole split from every rank's predictions with ``DistributedSampler``'s padded duplicates removed by
    ``index``, so a DDP run logs the single-process value.

    Nothing silent (:mod:`lightning_regs.tasks.input_checks`): a NaN or inf in a training batch's inputs or bag
    responses (``"ce"``: proportions must be finite, non-negative and sum to one), or in the loss, is a named error,
    or with ``nonfinite="skip"`` the step is skipped, counted in ``train/skipped_nonfinite`` and warned about. In
    validation and test, rows whose input is not finite are left out of the metric (counted in
    ``<stage>/nonfinite_inputs``, one warning per stage); a non-finite float label (``"mse"``) or a class id outside
    ``[0, C)`` (``"ce"``) is a named error.

    Under DDP each rank computes the loss over its own batch of whole bags and gradients are averaged: with the
    same number of bags on every rank (``BagBatchSampler``) the ``"uniform"`` bag loss is the one over the global
    batch, and the instance terms are when the ranks hold equally many rows (bags of one size).

    Args:
        model: maps ``batch["image"]`` to ``(B,)`` or ``(B, 1)`` predictions (``"mse"``) or ``(B, C)`` logits
            (``"ce"``); a dict with ``"logits"`` or an object with ``.logits`` is read too.
        rho: ρ ∈ [0, 1] (no default: the best value depends on the bags, the noise and the sample size; see
            ``docs/methods/aggregate_responses.md``).
        loss: ``"mse"`` (regression on bag means) or ``"ce"`` (learning from label proportions).
        bag_weights: ``"uniform"`` (each bag of the batch counts ``1/m``) or ``"size"`` (``n_a/n``; then ρ = 1 is the
            instance-level loss for any bag sizes).
        num_classes: for ``"ce"``, checked against the logits and the DataModule; ``None`` reads the logits.
        optimizer, lr, momentum, nesterov, weight_decay, scheduler, warmup_epochs, milestones, gamma, min_lr_ratio:
            as :class:`~lightning_regs.tasks.ImageClassifier`'s (:func:`~lightning_regs.tasks.build_optimizer`,
            :class:`~lightning_regs.tasks.WarmupSchedule`), with AdamW at a constant rate by default.
        nonfinite: ``"raise"`` (default) or ``"skip"`` (see above).

    Example::

        >>> task = AggregateResponseTask(nn.Linear(3, 1), rho=0.5)
        >>> batch = {"image": torch.randn(4, 3), "target": torch.tensor([1.0, 1.0, -2.0, -2.0]),
        ...          "bag_id": torch.tensor([0, 0, 1, 1])}
        >>> out = task.training_step(batch, 0)
        >>> sorted(out), out["logits"].shape
        (['logits', 'loss'], torch.Size([4]))
    """

    def __init__(
        self,
        model: nn.Module,
        rho: float,
        loss: Literal["mse", "ce"] = "mse",
        bag_weights: BagWeights = "uniform",
        num_classes: int | None = None,
        optimizer: OptimizerName = "adamw",
        lr: float = 1e-2,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        scheduler: SchedulerName = "constant",
        warmup_epochs: float = 0.0,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        min_lr_ratio: float = 0.0,
        nonfinite: NonFinite = "raise",
    ) -> None:
        super().__init__()
        check_nonfinite_option("AggregateResponseTask", nonfinite)
        if isinstance(rho, bool) or not isinstance(rho, numbers.Real) or not math.isfinite(rho) or not 0 <= rho <= 1:
            raise ValueError(
                f"rho must be a number in [0, 1] (0: the bag-level loss, 1: the instance-level loss), got {rho!r}."
            )
        if loss not in ("mse", "ce"):
            raise ValueError(
                f"Unknown loss {loss!r}: use 'mse' (regression on bag means) or 'ce' (label proportions, logits)."
            )
        if bag_weights not in ("uniform", "size"):
            raise ValueError(f"Unknown bag_weights {bag_weights!r}: use 'uniform' or 'size'.")
        if num_classes is not None and (loss == "mse" or num_classes < 2):
            raise ValueError(
                f"num_classes={num_classes}: it is for loss='ce' (two classes or more); a regression has none."
            )
        # A live model is saved with the weights, not in hparams; under LightningCLI its config is kept.
        self.save_hyperparameters(ignore=["model"])
        if "_instantiator" in self.hparams:
            self.save_hyperparameters()
        self.task_settings = own_settings(AggregateResponseTask.__init__, locals(), exclude=("model",))
        self.model = model
        self._eval_rows: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        self._skipped_warnings = 0
        self._warned_stages: set[str] = set()

    @property
    def metric_name(self) -> str:
        """The instance-level metric of validation and test: ``"mse"`` or ``"acc"``."""
        return "mse" if self.task_settings.loss == "mse" else "acc"

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Instance predictions: ``(B,)`` values (``"mse"``) or ``(B, C)`` logits (``"ce"``)."""
        output = logits_of(self.model(x))
        if self.task_settings.loss == "mse":
            if output.dim() == 2 and output.shape[1] == 1:
                output = output.squeeze(1)
            if output.dim() != 1:
                raise ValueError(
                    f"loss='mse' needs one prediction per row, (B,) or (B, 1); the model returned shape "
                    f"{tuple(output.shape)}. Give it one output (e.g. nn.Linear(d, 1)), or use loss='ce' for logits."
                )
            return output
        num_classes = self.task_settings.num_classes
        if output.dim() != 2 or (num_classes is not None and output.shape[1] != num_classes):
            raise ValueError(
                f"loss='ce' needs (B, {num_classes or 'C'}) logits; the model returned shape {tuple(output.shape)}."
            )
        return output

    @override
    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy``, shard with FSDP2 (the task is the one unit); under any other, nothing."""
        shard_under_model_parallel(self)

    @override
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if attached_trainer(self) is not None else None
        data_classes = getattr(datamodule, "num_classes", None)
        given = self.task_settings.num_classes
        if isinstance(data_classes, int) and given is not None and data_classes != given:
            raise ValueError(
                f"The DataModule {type(datamodule).__name__} has {data_classes} classes but the task was built with "
                f"num_classes={given}. Give the task (and the model) {data_classes} classes."
            )

    @override
    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor] | None:
        if not isinstance(batch, Mapping) or BAG_ID not in batch:
            keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise TypeError(
                f"{type(self).__name__} trains on dict batches of instance rows with '{BAG_ID}' (each row's bag) and "
                f"'target' (its bag's response), got {keys}. Use AggregateRegressionDataModule or "
                "LabelProportionsDataModule, or bag_dataloader(AggregateDataset(features, bag_targets, bag_ids), "
                "BagBatchSampler(bag_ids, bags_per_batch)) (lightning_regs.datamodules): AggregateDataset serves "
                "your tensors as dicts with 'image', 'target' and 'bag_id'."
            )
        image, target = unpack_batch(batch)
        hp = self.task_settings
        if not self._training_batch_ok(image, target, batch_idx):
            return skipped_step_output(self)
        preds = self(image)
        terms = aggregate_response_terms(preds, batch[BAG_ID], target, hp.rho, hp.loss, hp.bag_weights)
        if not self._finite(terms.loss.detach()):
            if hp.nonfinite == "raise":
                raise ValueError(
                    f"AggregateResponseTask: training step {self.global_step} (batch {batch_idx}) has a non-finite "
                    f"loss ({describe_nonfinite(terms.loss.detach())}) although its inputs are finite: the model "
                    f"diverged. Lower the learning rate or clip gradients; {NONFINITE_FIX}."
                )
            self._skip(batch_idx, "the loss is not finite")
            return skipped_step_output(self)
        if hp.nonfinite == "skip":
            self.log("train/skipped_nonfinite", 0.0, on_step=False, on_epoch=True, reduce_fx="sum", batch_size=1)
        rows = int(preds.shape[0])
        self.log("train/loss", terms.loss.detach(), prog_bar=True, batch_size=rows)
        self.log("train/bag_loss", terms.bag.detach(), batch_size=rows)
        self.log("train/instance_loss", terms.instance.detach(), batch_size=rows)
        self.log("train/regularizer", terms.regularizer.detach(), batch_size=rows)
        return {"loss": terms.loss, "logits": preds.detach()}

    def _finite(self, flag_of: torch.Tensor, *more: torch.Tensor) -> bool:
        finite = torch.stack([torch.isfinite(flag_of).all(), *more]).all()
        if (
            self.task_settings.nonfinite == "skip"
            and attached_trainer(self) is not None
            and self.trainer.world_size > 1
        ):
            finite = self.trainer.strategy.reduce((~finite).float(), reduce_op="sum") == 0  # every rank skips
        return bool(finite)

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        drop_skipped_gradients(self, optimizer)

    def _training_batch_ok(self, image: torch.Tensor, target: torch.Tensor, batch_idx: int) -> bool:
        """Whether to train on the batch: a named error on bad labels (and on non-finite values with
        ``nonfinite="raise"``); with ``"skip"`` the decision is all-reduced, so every rank skips together."""
        bad = self._nonfinite_training_values(image, target, batch_idx)
        if not self._finite(torch.zeros((), device=self.device), torch.tensor(bad is None, device=self.device)):
            self._skip(batch_idx, f"non-finite values in {bad}" if bad else "another process's batch held non-finite "
                       "values (every rank skips the step together)")  # fmt: skip
            return False
        return True

    def _nonfinite_training_values(self, image: torch.Tensor, target: torch.Tensor, batch_idx: int) -> str | None:
        # One host read: the inputs and the bag responses, before the forward.
        where = f"train batch {batch_idx}"
        if self.task_settings.loss == "ce":
            if not (target.is_floating_point() and target.dim() == 2):
                raise ValueError(
                    f"AggregateResponseTask: {where} holds a target of dtype {target.dtype} and shape "
                    f"{tuple(target.shape)}; loss='ce' trains on each row's bag class proportions, float (B, C)."
                )
            valid = target_flags("AggregateResponseTask", where, target, target, target.shape[1], None, None)
            read = torch.stack([*valid, torch.isfinite(image).all()]).tolist()
            if not read[0]:
                raise ValueError(
                    label_problem("AggregateResponseTask", where, target, target, target.shape[1], None).replace(
                        "soft targets", "bag proportions"
                    )
                )
            if read[1]:
                return None
            bad = f"batch['image'] ({describe_nonfinite(image)})"
        else:
            read = torch.stack([torch.isfinite(target).all(), torch.isfinite(image).all()]).tolist()
            if read[0] and read[1]:
                return None
            bad = (
                f"batch['image'] ({describe_nonfinite(image)})"
                if not read[1]
                else f"batch['target'], the bag responses ({describe_nonfinite(target)})"
            )
        if self.task_settings.nonfinite == "raise":
            raise ValueError(
                f"AggregateResponseTask: training step {self.global_step} (batch {batch_idx}) has non-finite values "
                f"in {bad}. Fix: {NONFINITE_FIX}."
            )
        return bad

    def _skip(self, batch_idx: int, reason: str) -> None:
        self.log("train/skipped_nonfinite", 1.0, on_step=False, on_epoch=True, reduce_fx="sum", batch_size=1)
        self._skipped_warnings += 1
        if self._skipped_warnings <= 5:
            rank_zero_warn(
                f"AggregateResponseTask(nonfinite='skip'): skipped training step {self.global_step} (batch "
                f"{batch_idx}): {reason}. Skipped steps are counted in train/skipped_nonfinite."
            )

    def _collect(self, batch: Any, stage: str, batch_idx: int | None = None) -> None:
        if isinstance(batch, Mapping) and BAG_ID in batch:
            raise ValueError(
                f"{stage} batches carry '{BAG_ID}': these are bag rows whose target is their bag's response, but "
                f"{type(self).__name__} scores single instances against their own labels. Validate and test on "
                "instance-level data (the aggregate DataModules' val and test splits are)."
            )
        image, truth = unpack_batch(batch)
        finite_rows = torch.isfinite(image.flatten(1)).all(1) if image.is_floating_point() else None
        if finite_rows is not None and truth.dim() == 1 and truth.is_floating_point():
            read = torch.stack([finite_rows.all(), torch.isfinite(truth).all()]).tolist()
            if not read[1]:
                raise ValueError(
                    f"AggregateResponseTask: {stage} batch {batch_idx} holds non-finite labels in 'target' "
                    f"({describe_nonfinite(truth)}); every instance needs a finite response. Fix the data's labels."
                )
        else:
            read = [bool(finite_rows.all())] if finite_rows is not None else [True]
        dropped = 0 if read[0] else int((~finite_rows).sum())
        rows = len(finite_rows) if finite_rows is not None else 0
        report_nonfinite_inputs(
            self, self._warned_stages, stage, dropped, rows, f"{stage} batch {batch_idx}", f"{stage}/{self.metric_name}"
        )
        if dropped:  # rows with non-finite inputs count in no metric
            image, truth = image[finite_rows], truth[finite_rows]
            if isinstance(batch, Mapping) and INDEX in batch:
                batch = {**batch, INDEX: batch[INDEX][finite_rows]}
        preds = self(image)
        if self.task_settings.loss == "mse":
            if truth.dim() != 1 or not truth.is_floating_point():
                raise ValueError(
                    f"{stage} batches hold single instances with their own float response in 'target' (B,), got "
                    f"{truth.dtype} {tuple(truth.shape)}: validate and test on instance-level labels."
                )
            predicted, truth = preds.detach().double(), truth.double()
        else:
            if truth.dim() != 1 or truth.is_floating_point():
                raise ValueError(
                    f"{stage} batches hold single instances with their own class id in 'target' (int64 (B,)), got "
                    f"{truth.dtype} {tuple(truth.shape)}: validate and test on instance-level labels, not proportions."
                )
            classes = preds.shape[1]
            if len(truth) and not bool(((truth >= 0) & (truth < classes)).all()):
                raise ValueError(
                    label_problem("AggregateResponseTask", f"{stage} batch {batch_idx}", truth, truth, classes, None)
                )
            predicted = preds.detach().argmax(dim=1)
        index = batch.get(INDEX) if isinstance(batch, Mapping) else None
        rows = self._eval_rows.setdefault(stage, [])
        if index is None:  # positions unique over the batches and ranks, so that no row is dropped as a duplicate
            seen = sum(part[0].shape[0] for part in rows)
            world_size = getattr(attached_trainer(self), "world_size", 1) if attached_trainer(self) is not None else 1
            index = (seen + torch.arange(len(truth), device=truth.device)) * world_size + self.global_rank
        rows.append((index.to(predicted.device), predicted, truth.to(predicted.device)))

    def _score(self, stage: str) -> None:
        rows = self._eval_rows.pop(stage, [])
        if rows:
            index, predicted, truth = (torch.cat(parts) for parts in zip(*rows, strict=True))
        else:  # a rank without rows still joins the other ranks' gather
            dtype = torch.float64 if self.metric_name == "mse" else torch.long
            index = torch.zeros(0, dtype=torch.long, device=self.device)
            predicted = truth = torch.zeros(0, dtype=dtype, device=self.device)
        _, predicted, truth = gather_unique_by_index(index, predicted, truth)
        if self.trainer.sanity_checking or not len(truth):
            return
        if self.metric_name == "mse":
            value = (predicted - truth).square().mean().float()
        else:
            value = (predicted == truth).double().mean().float()
        # every rank scores the same gathered predictions; sync_dist only averages equal values
        self.log(f"{stage}/{self.metric_name}", value, prog_bar=stage == "val", sync_dist=True)

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._collect(batch, "val", batch_idx)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._collect(batch, "test", batch_idx)

    @override
    def on_validation_epoch_end(self) -> None:
        self._score("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._score("test")

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Instance predictions: values (``"mse"``) or class probabilities (``"ce"``)."""
        preds = self(read_inputs(batch))
        return preds if self.task_settings.loss == "mse" else preds.softmax(dim=-1)

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        return recipe_optimizers(self, self.task_settings)
