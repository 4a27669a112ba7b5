"""A ready image classifier that honours the dict batch contract and the papers' training recipes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_regs._compat import attached_trainer
from lightning_regs.batch import (
    HARD_TARGET,
    INSTANCE_MASK,
    MIX_LAMBDA,
    MIX_PARTNER,
    SAMPLE_TARGET,
    TARGET,
    StepBatch,
    read_inputs,
    read_step,
)
from lightning_regs.callbacks.soft_target_callback import SoftTargetCallback
from lightning_regs.functional.classification import classification_loss
from lightning_regs.functional.mixing import combine_interpolated
from lightning_regs.functional.outputs import model_outputs

# The parts of the task, one module each: non-finite handling, loss terms, metrics (optimizers: tasks/optim.py).
from lightning_regs.tasks.classifier_loss_terms import LossTermHost
from lightning_regs.tasks.classifier_metrics import ClassifierMetrics, classification_metrics
from lightning_regs.tasks.classifier_nonfinite import NonFiniteSteps
from lightning_regs.tasks.input_checks import (
    NonFinite,
    check_ignore_index,
    check_nonfinite_option,
    select_rows,
    skipped_step_output,
)
from lightning_regs.tasks.loss_terms import LossTerm
from lightning_regs.tasks.optim import OptimizerName, SchedulerName, recipe_optimizers
from lightning_regs.tasks.settings import own_settings
from lightning_regs.tasks.sharding import shard_under_model_parallel
from lightning_regs.trusted_loading import TrustedCheckpointLoading

__all__ = ["ImageClassifier"]


class ImageClassifier(TrustedCheckpointLoading, LossTermHost, NonFiniteSteps, ClassifierMetrics, pl.LightningModule):
    """Classify ``batch["image"]`` into ``num_classes`` with cross-entropy on hard or soft targets.

    ``training_step`` returns ``{"loss", "logits"}`` (logits detached) so callbacks can read the
    predictions. Targets may be int64 class ids ``(B,)`` or float probabilities ``(B, C)`` (what
    target-refining callbacks such as PS-KD put in the batch); accuracy and calibration use the
    arg-max of soft targets, or ``batch["hard_target"]`` when a callback put the labels there.
    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``,
    ``val/ece`` and ``test/*`` alike.

    Nothing silent (:mod:`lightning_regs.tasks.input_checks`): every batch of every stage has its labels checked
    (class ids in ``[0, num_classes)`` or ``ignore_index``; soft targets finite, non-negative, rows summing to one),
    and its inputs checked for NaN and inf. A non-finite input or loss in a training step is a named error, or with
    ``nonfinite="skip"`` the step is skipped (no parameter or optimizer state changes; ``training_step`` returns
    ``None`` on one process, and under DDP, where Lightning refuses ``None``, a zero loss over the trainable
    parameters whose gradients are dropped before ``optimizer.step()``, marked ``{"skipped_nonfinite": True}``),
    counted in ``train/skipped_nonfinite`` and warned about. In validation and test,
    rows whose input is not finite are left out of every metric (loss, accuracy, calibration), their number logged
    as ``<stage>/nonfinite_inputs`` with one warning per stage and run: no metric is computed from a NaN input. Two
    small host reads per training step (before the forward, and of the loss), one per evaluation step.

    The backbone may return the logits, a dict with ``"logits"`` and more (``"features"``, ``"attention"``), or an
    object with ``.logits`` (a Hugging Face ``ModelOutput``, a dataclass): :func:`~lightning_regs.tasks.model_outputs`
    turns it into a dict. The training loss is :meth:`compute_loss` plus ``Σ weight·term(outputs, batch)`` over the
    ``loss_terms`` (:class:`~lightning_regs.tasks.LossTerm` modules: they see every output, keep their buffers in the
    checkpoint under ``loss_terms.<name>.``, and are logged unweighted as ``train/<name>``). Validation and test
    losses are :meth:`compute_loss` alone.

    Args:
        backbone: the network mapping images to ``num_classes`` logits (any ``nn.Module``; the models
            in :mod:`lightning_regs.models` also expose their layer sequence).
        num_classes: number of classes; checked against the backbone, the DataModule and the logits.
        optimizer: ``sgd`` (momentum, Nesterov) or ``adamw``.
        lr: base learning rate.
        momentum: SGD momentum.
        nesterov: SGD Nesterov momentum.
        weight_decay: L2 weight decay (decoupled for AdamW).
        scheduler: ``constant``, ``step`` (×``gamma`` at ``milestones`` epochs) or ``cosine``; stepped
            every optimizer step.
        warmup_epochs: linear warm-up length in (possibly fractional) epochs.
        milestones: epochs at which the ``step`` schedule decays.
        gamma: the ``step`` decay factor.
        min_lr_ratio: the ``cosine`` floor as a fraction of ``lr``.
        label_smoothing: cross-entropy label smoothing.
        ece_bins: number of bins of the expected calibration error (15, torchmetrics' default; the PS-KD
            paper's code uses 10).
        loss_terms: :class:`~lightning_regs.tasks.LossTerm` modules added to the training loss, distinct names
            (also :meth:`add_loss_term`). Saved with the weights, not in ``hparams`` (under LightningCLI their
            ``class_path``/``init_args`` config is kept, as the backbone's).
        nonfinite: ``"raise"`` (default): a NaN or inf in a training step's inputs or loss is a named error;
            ``"skip"``: such steps are skipped, counted (``train/skipped_nonfinite``) and warned about. Under DDP
            the decision is all-reduced, so every rank skips the same steps.
        ignore_index: a label value (such as -100) whose rows are left out of the loss and the metrics; ``None``
            (default): every label must be a class id in ``[0, num_classes)``.

    Example::

        >>> import torch
        >>> from lightning_regs.models import SmallCNN
        >>> task = ImageClassifier(SmallCNN(num_classes=10), num_classes=10)
        >>> batch = {"image": torch.randn(4, 1, 8, 8), "target": torch.tensor([0, 1, 2, 3])}
        >>> out = task.training_step(batch, 0)
        >>> sorted(out), out["logits"].shape
        (['logits', 'loss'], torch.Size([4, 10]))
    """

    #: Soft ``(B, C)`` targets are trained on and metrics read ``hard_target`` (silences SoftTargetCallback's warning).
    accepts_soft_targets = True
    #: Under an input-rewriting callback with ``mode="loss"``, the loss is ``λ·ℓ(y_i) + (1 − λ)·ℓ(y_{p(i)})``.
    interpolates_mixed_loss = True
    #: Names a loss term may not take: they are the task's own ``train/<name>`` metrics.
    reserved_term_names = frozenset({"loss", "acc"})

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: OptimizerName = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 5e-4,
        scheduler: SchedulerName = "cosine",
        warmup_epochs: float = 0.0,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        min_lr_ratio: float = 0.0,
        label_smoothing: float = 0.0,
        ece_bins: int = 15,
        loss_terms: Sequence[LossTerm] | None = None,
        nonfinite: NonFinite = "raise",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        check_nonfinite_option(type(self).__name__, nonfinite)
        check_ignore_index(type(self).__name__, ignore_index, num_classes)
        backbone_classes = getattr(backbone, "num_classes", None)
        if isinstance(backbone_classes, int) and backbone_classes != num_classes:
            raise ValueError(
                f"The backbone {type(backbone).__name__} produces {backbone_classes} logits but num_classes="
                f"{num_classes}. Give both the same number of classes (the DataModule's `num_classes`)."
            )
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
        # A live backbone is saved with the weights, not in hparams (it would not load with weights_only=True).
        # LightningCLI hands its config to save_hyperparameters (and marks it with "_instantiator"): there the
        # backbone is a class_path/init_args dict, which load_from_checkpoint needs to rebuild the model.
        # Loss terms alike: modules, saved with the weights (their config is kept under LightningCLI).
        self.save_hyperparameters(ignore=["backbone", "loss_terms"])
        if "_instantiator" in self.hparams:
            self.save_hyperparameters()
        # What the task reads, from its own arguments: under LightningCLI hparams hold the config of the class
        # named there, and a subclass with its own signature (MyClassifier(lr)) would lack these.
        self.task_settings = own_settings(ImageClassifier.__init__, locals(), exclude=("backbone", "loss_terms"))
        self.backbone = backbone
        self.num_classes = num_classes
        self.metrics = classification_metrics(num_classes, ece_bins)
        self._skipped_warnings = 0
        self._dropped_rows = 0
        self._warned_nonfinite_stages: set[str] = set()
        self.loss_terms = nn.ModuleDict()
        for term in loss_terms or ():
            self.add_loss_term(term)
        self._loss_terms_applied = False

    @override
    def on_fit_start(self) -> None:
        rewriting = [
            type(c).__name__
            for c in self.trainer.callbacks
            if isinstance(c, SoftTargetCallback) and not getattr(c, "rewrites_inputs", False)
        ]
        if rewriting and self.task_settings.label_smoothing > 0:
            rank_zero_warn(
                f"{type(self).__name__}(label_smoothing={self.task_settings.label_smoothing}) smooths the targets that "
                f"{', '.join(rewriting)} already rewrote: they are smoothed twice. Set label_smoothing=0 (or use "
                "the LabelSmoothing callback alone)."
            )

    @override
    def forward(self, image: torch.Tensor) -> Any:
        """The backbone's output: logits, a dict with ``"logits"``, or an object with ``.logits``."""
        return self.backbone(image)

    @override
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if attached_trainer(self) is not None else None
        data_classes = getattr(datamodule, "num_classes", None)
        if isinstance(data_classes, int) and data_classes != self.num_classes:
            raise ValueError(
                f"The DataModule {type(datamodule).__name__} has {data_classes} classes but the model was built "
                f"with num_classes={self.num_classes}. Set model num_classes (and the backbone's) to {data_classes}."
            )

    @override
    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy``, shard the model with FSDP2; under any other strategy, nothing.

        :func:`~lightning_regs.tasks.sharding.shard_under_model_parallel`: ``fully_shard_task`` over the
        strategy's ``data_parallel`` mesh, once (the hook runs at every ``fit``/``validate``/``test``). See
        ``docs/fsdp2.md``.
        """
        shard_under_model_parallel(self)

    def compute_loss(self, logits: torch.Tensor, batch: Any) -> torch.Tensor:
        """The training objective for ``logits`` on ``batch``: cross-entropy on hard or soft ``target``.

        Override this one method to change the loss (``GrokkingClassifier`` does: MSE on one-hot targets);
        the checks, metrics and logging of every stage stay the same, and so does the loss interpolation of
        ``MixUp(mode="loss")`` (:meth:`objective` calls this once per mixed label).
        """
        return classification_loss(logits, read_step(batch).target, self.task_settings.label_smoothing)

    def objective(self, logits: torch.Tensor, step: StepBatch) -> torch.Tensor:
        """:meth:`compute_loss`, interpolated over both labels of a row when a ``mode="loss"`` mixing ran."""
        batch = step.batch
        if not isinstance(batch, Mapping) or MIX_PARTNER not in batch or SAMPLE_TARGET in batch:
            return self.compute_loss(logits, batch)
        partner = batch[MIX_PARTNER]
        swapped = {**batch, TARGET: step.target[partner]}  # every row with its partner's labels
        if HARD_TARGET in batch:
            swapped[HARD_TARGET] = batch[HARD_TARGET][partner]
        own, mixed_in = self.compute_loss(logits, batch), self.compute_loss(logits, swapped)
        return combine_interpolated(own, mixed_in, batch[MIX_LAMBDA])

    def labels(self, batch: Any) -> torch.Tensor:
        """The class ids metrics are measured against: ``hard_target`` when a callback softened ``target``."""
        return read_step(batch).labels

    def logits_and_loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Check the batch (labels, finite inputs), forward ``batch["image"]``, check the logits and compute the loss.

        A non-finite input is a named error here whatever ``nonfinite`` says (a custom ``training_step`` that wants
        to skip such steps calls :meth:`check_training_batch` itself and returns ``None``).
        """
        step = read_step(batch)
        self.check_batch(step, "train", None, "raise")
        return self._forward_step(step)

    def _forward_step(self, step: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
        outputs, loss = self._forward_outputs(step)
        return outputs["logits"], loss

    def _forward_outputs(self, step: StepBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        padded = isinstance(step.batch, Mapping) and INSTANCE_MASK in step.batch
        if padded and not bool(step.batch[INSTANCE_MASK].all()):
            raise ValueError(
                f"The batch pads bags of different sizes (instance_mask), which {type(self).__name__} does not pass to "
                "its model: the padding would be attended to. Use lightning_regs.tasks.MILClassifier for bags (it "
                "calls model(bags, instance_mask)), or load one bag per batch (batch_size=1)."
            )
        outputs = model_outputs(self(step.image))
        self.check_logits(outputs["logits"])
        return outputs, self._loss_over_labelled_rows(outputs["logits"], step)

    def _loss_over_labelled_rows(self, logits: torch.Tensor, step: StepBatch) -> torch.Tensor:
        # With ignore_index, the rows holding it are left out of the loss (the forward saw them all, as BatchNorm
        # sees the rows F.cross_entropy(ignore_index=...) ignores). One host read, only when ignore_index is set.
        ignore = self.task_settings.ignore_index
        if ignore is None or step.target.is_floating_point():
            return self.objective(logits, step)
        keep = step.labels != ignore
        if bool(keep.all()):
            return self.objective(logits, step)
        if not bool(keep.any()):
            return logits.sum() * 0.0  # every row ignored: no loss, the graph kept
        return self.objective(logits[keep], select_rows(step, keep))

    def check_logits(self, logits: torch.Tensor) -> None:
        """Raise a named error unless ``logits`` is ``(batch, num_classes)``."""
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"The backbone returned logits of shape {tuple(logits.shape)}; expected (batch, {self.num_classes}). "
                "Build the backbone with the same num_classes as the task."
            )

    @override
    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor] | None:
        step = read_step(batch)
        if self.check_batch(step, "train", batch_idx) is not None:  # nonfinite="skip" and a non-finite input
            self._loss_terms_applied = True
            self.skip_step(batch_idx, self._nonfinite_reason("batch['image']", "holds", step.image))
            return skipped_step_output(self)
        outputs, loss = self._forward_outputs(step)
        values: dict[str, torch.Tensor] = {}
        if len(self.loss_terms):
            extra, values = self.term_losses(outputs, step.batch)
            loss = loss + extra
        if not self.check_loss(loss, batch_idx):
            self.skip_step(batch_idx, self._nonfinite_reason("the loss", "is", loss.detach()))
            return skipped_step_output(self)
        self._log_skipped(0.0)
        for name, value in values.items():
            self.log(f"train/{name}", value.detach())
        result = self.log_training(loss, outputs["logits"], step)
        self.update_loss_terms(outputs, step.batch)
        return result

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, with a named error, a checkpoint without weights (truncated, or not a Lightning checkpoint)."""
        super().on_load_checkpoint(checkpoint)
        trainer = attached_trainer(self)
        if trainer is not None and not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy)):
            return  # sharded strategies (FSDP2's ModelParallelStrategy) load the weights themselves, before this hook
        weights = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
        if not isinstance(weights, Mapping):
            keys = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
            raise ValueError(
                f"{type(self).__name__}: the checkpoint has no 'state_dict' (the weights) but {keys}: it is "
                "truncated, or not a Lightning checkpoint of this task and version. Resume from a checkpoint "
                "written by Trainer.fit (ModelCheckpoint) of this task."
            )

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return model_outputs(self(read_inputs(batch)))["logits"].softmax(dim=-1)

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        return recipe_optimizers(self, self.task_settings)
