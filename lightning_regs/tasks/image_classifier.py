"""A ready image classifier that honours the dict batch contract and the papers' training recipes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError
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
from lightning_regs.functional.mixing import combine_interpolated, mixed_accuracy
from lightning_regs.functional.outputs import model_outputs
from lightning_regs.tasks.input_checks import (
    NONFINITE_FIX,
    NonFinite,
    check_ignore_index,
    check_nonfinite_option,
    describe_nonfinite,
    drop_skipped_gradients,
    label_problem,
    report_nonfinite_inputs,
    row_count,
    select_rows,
    skipped_step_output,
    target_flags,
)
from lightning_regs.tasks.loss_terms import LossTerm
from lightning_regs.tasks.optim import OptimizerName, SchedulerName, recipe_optimizers
from lightning_regs.tasks.settings import own_settings
from lightning_regs.tasks.sharding import shard_under_model_parallel
from lightning_regs.trusted_loading import TrustedCheckpointLoading

__all__ = ["ImageClassifier"]


class ImageClassifier(TrustedCheckpointLoading, pl.LightningModule):
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
        self.metrics = nn.ModuleDict(
            {
                # the mean of mixed_accuracy's per-row credit: plain accuracy on unmixed batches
                "train_acc": MeanMetric(),
                "val_acc": MulticlassAccuracy(num_classes, average="micro"),
                "val_ece": MulticlassCalibrationError(num_classes, n_bins=ece_bins, norm="l1"),
                "test_acc": MulticlassAccuracy(num_classes, average="micro"),
                "test_ece": MulticlassCalibrationError(num_classes, n_bins=ece_bins, norm="l1"),
            }
        )
        self._skipped_warnings = 0
        self._dropped_rows = 0
        self._warned_nonfinite_stages: set[str] = set()
        self.loss_terms = nn.ModuleDict()
        for term in loss_terms or ():
            self.add_loss_term(term)
        self._loss_terms_applied = False

    def add_loss_term(self, term: LossTerm) -> LossTerm:
        """Add ``term`` to the training loss, under ``loss_terms[term.name]``; returns it.

        Raises:
            TypeError: when ``term`` is not a :class:`~lightning_regs.tasks.LossTerm`.
            ValueError: when the task already has a term of that name, or the name is one of the task's metrics.
        """
        if not isinstance(term, LossTerm):
            raise TypeError(
                f"loss_terms take lightning_regs.tasks.LossTerm modules (forward(outputs, batch) -> scalar, a name "
                f"and a weight), got {type(term).__name__}."
            )
        if term.name in self.loss_terms:
            raise ValueError(
                f"Two loss terms are named {term.name!r} ({type(self.loss_terms[term.name]).__name__} and "
                f"{type(term).__name__}): a term's name is its key in the checkpoint and its metric train/<name>; "
                "give each term its own name."
            )
        if term.name in self.reserved_term_names:
            raise ValueError(
                f"A loss term may not be named {term.name!r}: train/{term.name} is {type(self).__name__}'s own metric."
            )
        self.loss_terms[term.name] = term
        return term

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

    def term_losses(
        self, outputs: Mapping[str, torch.Tensor], batch: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``Σ current_weight·term(outputs, batch)`` over :attr:`loss_terms` and each term's unweighted value.

        A subclass with its own ``training_step`` calls this (and :meth:`update_loss_terms`) to keep its terms;
        a run whose training step never calls it while the task has terms stops with a named error.
        """
        self._loss_terms_applied = True
        values = {name: term(outputs, batch) for name, term in self.loss_terms.items()}
        step, epoch = self.global_step, self.current_epoch
        total = sum(
            (self.loss_terms[name].current_weight(step, epoch) * value for name, value in values.items()),
            start=outputs["logits"].new_zeros(()),
        )
        return total, values

    @torch.no_grad()
    def update_loss_terms(self, outputs: Mapping[str, torch.Tensor], batch: Any) -> None:
        """Let each loss term update its state (:meth:`LossTerm.update`), once per training step."""
        for term in self.loss_terms.values():
            term.update(outputs, batch)

    def check_logits(self, logits: torch.Tensor) -> None:
        """Raise a named error unless ``logits`` is ``(batch, num_classes)``."""
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"The backbone returned logits of shape {tuple(logits.shape)}; expected (batch, {self.num_classes}). "
                "Build the backbone with the same num_classes as the task."
            )

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
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if len(self.loss_terms) and not self._loss_terms_applied:
            raise RuntimeError(
                f"{type(self).__name__} has loss terms {sorted(self.loss_terms)} but its training_step never added "
                "them: call `self.term_losses(outputs, batch)` (and `self.update_loss_terms(outputs, batch)`) in it, "
                "as ImageClassifier.training_step does, or build the task without loss_terms."
            )

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
