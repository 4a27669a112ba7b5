"""PS-KD as a callback: the model's own last predictions progressively refine its training targets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_regs.batch import CLEAN_IMAGE, INDEX, MIX_PARTNER
from lightning_regs.callbacks._pskd_checks import check_callback_state, check_index_range, read_index
from lightning_regs.callbacks.prediction_table import PredictionTable, Storage, check_table_state
from lightning_regs.callbacks.soft_target_callback import SoftTargetCallback, num_classes_of
from lightning_regs.datamodules.fingerprint import data_fingerprint, fingerprint_difference
from lightning_regs.functional.outputs import describe_output, logits_of
from lightning_regs.functional.pskd import pskd_alpha, pskd_targets
from lightning_regs.modes import side_effect_free

__all__ = ["ProgressiveSelfKD"]


class ProgressiveSelfKD(SoftTargetCallback):
    """Progressive self-knowledge distillation (Kim et al., ICCV 2021) for any module that honours the batch contract.

    Before each training step, replaces ``batch["target"]`` (int64 class ids) with
    ``(1 − α_e)·onehot(y) + α_e·p(x)``, where ``p(x)`` is the softmax of the logits the model produced
    for that sample the last time it was trained on (stored in a per-sample table keyed by
    ``batch["index"]``), and ``α_e = α_T·(e + 1)/T``. The first epoch trains on one-hot targets. The
    original ids stay in ``batch["hard_target"]`` so accuracy is still measured against the labels. It
    is a :class:`~lightning_regs.callbacks.SoftTargetCallback`: after another target-rewriting callback
    (listed before it), ``onehot(y)`` is replaced by that callback's target.
    After the step, the softmax of ``training_step``'s returned ``"logits"`` is written to the table;
    under DDP the (index, probabilities) pairs of all ranks are gathered first so every rank holds
    the same table. The table is saved in checkpoints with the schedule's ``T`` and a fingerprint of the
    training set (size, labels and file digests), and checked on restore: a table from other data, or one
    that is not a table of probabilities, is a named error. Predictions that are not finite (a diverged
    batch) are not stored: those samples keep their previous targets, and a warning at the epoch's end
    says how many.

    The module needs: dict batches with ``target`` and ``index``, a loss that accepts ``(B, C)``
    probabilities (``F.cross_entropy`` does), and ``training_step`` returning ``{"loss", "logits"}``.
    :class:`~lightning_regs.tasks.ImageClassifier` does all three.

    Args:
        alpha_T: α at the last epoch (0.8 in the paper for CIFAR-100 and ImageNet).
        total_epochs: ``T``; by default the Trainer's ``max_epochs`` (required when training by steps).
        storage: ``float32`` or ``float16`` table values.
        top_k: keep only the ``k`` largest probabilities per sample (renormalized); ``None`` keeps all.
        num_samples: table rows; by default the length of the training DataLoader's dataset.
        num_classes: table columns; by default the module's or DataModule's ``num_classes``, else the logits' width.
        table_device: where the table lives (e.g. ``"cpu"`` for ImageNet-scale tables); by default the module's device.
        preset: ``"library"`` (default) or ``"official"``: as the official loop, of two copies of an index in one
            gathered DDP batch (``DistributedSampler``'s padding) the last (higher rank) is stored instead of the
            first, and a run resumed with another ``max_epochs`` (or ``total_epochs``) recomputes α with the new
            ``T`` instead of keeping the one it started with. Non-finite predictions are never stored.
        rewritten_inputs: what to store when a mixing callback (MixUp, CutMix) mixed the batch's rows:
            ``"clean_forward"`` (default) stores the prediction of one extra forward (no gradient, the module's current
            mode and precision, buffers and RNG left as they were, the weights after the step) on the unmixed images
            ``batch["clean_image"]``, never the mixed image's prediction as a sample's own; ``"error"`` stops
            training with a named error instead. The targets are mixed either way: PS-KD refines each row's own
            target and the mixing is applied to the refined targets.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_regs.datamodules import DigitsDataModule
        >>> from lightning_regs.models import SmallCNN
        >>> from lightning_regs.tasks import ImageClassifier
        >>> trainer = Trainer(max_epochs=2, callbacks=[ProgressiveSelfKD(alpha_T=0.8)], logger=False,
        ...                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(ImageClassifier(SmallCNN(width=8), num_classes=10), DigitsDataModule())
        >>> callback = trainer.callbacks[0]
        >>> bool(callback.table.seen.all()), callback.total_epochs
        (True, 2)
    """

    #: Epoch 0 trains on the data's targets: there are no stored predictions yet.
    softening_starts = "epoch 1"

    def __init__(
        self,
        alpha_T: float = 0.8,
        total_epochs: int | None = None,
        storage: Storage = "float32",
        top_k: int | None = None,
        num_samples: int | None = None,
        num_classes: int | None = None,
        table_device: str | None = None,
        preset: Literal["library", "official"] = "library",
        rewritten_inputs: Literal["clean_forward", "error"] = "clean_forward",
    ) -> None:
        if preset not in ("library", "official"):
            raise ValueError(f"preset must be 'library' or 'official', got {preset!r}.")
        if rewritten_inputs not in ("clean_forward", "error"):
            raise ValueError(f"rewritten_inputs must be 'clean_forward' or 'error', got {rewritten_inputs!r}.")
        if not 0.0 <= alpha_T <= 1.0:
            raise ValueError(f"alpha_T must lie in [0, 1], got {alpha_T}.")
        if total_epochs is not None and total_epochs < 1:
            raise ValueError(f"total_epochs must be a positive number of epochs or None, got {total_epochs}.")
        if storage not in ("float32", "float16"):
            raise ValueError(f"storage must be 'float32' or 'float16', got {storage!r}.")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be a positive number of classes or None, got {top_k}.")
        super().__init__(num_classes)
        self.alpha_T = float(alpha_T)
        self.requested_total_epochs = total_epochs
        self.storage = storage
        self.top_k = top_k
        self.num_samples = num_samples
        self.table_device = table_device
        self.preset = preset
        self.rewritten_inputs = rewritten_inputs
        self.total_epochs: int | None = None
        self.table: PredictionTable | None = None
        self._restored_table: dict[str, Any] | None = None
        self._pending_index: torch.Tensor | None = None
        self._check_indices = True
        self._fingerprint: dict[str, Any] | None = None
        self._restored_fingerprint: dict[str, Any] | None = None
        self._warned_skipped = 0

    @property
    @override
    def state_key(self) -> str:
        return "ProgressiveSelfKD"

    def alpha(self, epoch: int) -> float:
        """``α`` at the 0-based ``epoch``."""
        if self.total_epochs is None:
            raise RuntimeError("ProgressiveSelfKD.alpha() is known once training starts (T comes from the Trainer).")
        return pskd_alpha(epoch, self.alpha_T, self.total_epochs)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._resolve_total_epochs(trainer)
        device = torch.device(self.table_device) if self.table_device else pl_module.device
        current = self._training_fingerprint(trainer)
        if self._restored_table is not None:
            self._check_same_data(current)
            self.table = PredictionTable.from_state_dict(self._restored_table, device=device)
            self._restored_table = None
            expected_rows = self._resolve_num_samples(trainer, required=False)
            if expected_rows is not None and expected_rows != self.table.num_samples:
                raise ValueError(
                    f"The checkpoint's PS-KD table has {self.table.num_samples} rows but the training set has "
                    f"{expected_rows} samples: resume with the data the run was started with."
                )
            classes = self.num_classes or num_classes_of(trainer, pl_module)
            if classes is not None and classes != self.table.num_classes:
                raise ValueError(
                    f"The checkpoint's PS-KD table has {self.table.num_classes} classes per row but the model has "
                    f"{classes}: the checkpoint is from another model or data set. Resume with the model the run was "
                    "started with, or start a new run (a fresh ProgressiveSelfKD)."
                )
        elif self.table is None:
            num_classes = self.num_classes or num_classes_of(trainer, pl_module)
            if num_classes is not None:
                self._allocate(trainer, num_classes, device)
        elif self.table.device != device:
            self.table.to(device)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log("pskd/alpha", self.effective_alpha(trainer.current_epoch), on_step=False, on_epoch=True)

    def effective_alpha(self, epoch: int) -> float:
        """The ``α`` the targets of ``epoch`` are mixed with: ``α_e``, but 0 in epoch 0 (no predictions stored yet)."""
        return self.alpha(epoch) if epoch > 0 and self.table is not None else 0.0

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        index = read_index(batch)
        if self.table is not None and self._check_indices:
            check_index_range(index, self.table.num_samples)
        self._pending_index = index
        if trainer.current_epoch > 0 and self.table is not None:
            self.soften(trainer, pl_module, batch)

    @override
    def refine_targets(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Mapping[str, Any],
        labels: torch.Tensor,
        targets: torch.Tensor,
    ) -> torch.Tensor:
        """Eq. 6: ``(1 − α_e)·targets + α_e·p`` for the rows with a stored prediction ``p``."""
        assert self.table is not None
        table_index = batch[INDEX].to(self.table.device)
        previous = self.table.read(table_index).to(labels.device)
        seen = self.table.seen[table_index].to(labels.device)
        return pskd_targets(targets.to(labels.device), previous, self.alpha(trainer.current_epoch), seen)

    @override
    def resolve_num_classes(self, trainer: pl.Trainer | None, pl_module: pl.LightningModule | None) -> int:
        return self.table.num_classes if self.table is not None else super().resolve_num_classes(trainer, pl_module)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        index, self._pending_index = self._pending_index, None
        skipped = isinstance(outputs, Mapping) and outputs.get("skipped_nonfinite") is True  # a task's DDP skip
        if outputs is None or index is None or skipped:  # training_step returned None: the batch was skipped
            return
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        if logits is None:
            raise TypeError(
                "ProgressiveSelfKD reads the model's predictions from training_step's output, but it returned "
                f"{describe_output(outputs)}. Return {{'loss': loss, 'logits': logits}} from training_step "
                "(lightning_regs.tasks.ImageClassifier does)."
            )
        logits = logits_of(logits, "training_step's 'logits'")  # the logits, or the model's output holding them
        if logits.dim() != 2 or logits.shape[0] != len(index):
            raise ValueError(
                f"training_step returned logits of shape {tuple(logits.shape)} for a batch of {len(index)} samples; "
                "ProgressiveSelfKD needs (batch, classes) logits, one row per sample of the batch."
            )
        if self.table is not None and logits.shape[1] != self.table.num_classes:
            raise ValueError(
                f"training_step returned {logits.shape[1]} logits per sample but the PS-KD table has "
                f"{self.table.num_classes} classes."
            )
        if isinstance(batch, Mapping) and MIX_PARTNER in batch:  # the logits are of mixed images
            logits = self._clean_logits(trainer, pl_module, batch[CLEAN_IMAGE])
        probabilities = logits.detach().float().softmax(dim=-1)
        if trainer.world_size > 1:
            probabilities = pl_module.all_gather(probabilities).flatten(0, 1)
            index = pl_module.all_gather(index).flatten()
        if self.table is None:
            device = torch.device(self.table_device) if self.table_device else pl_module.device
            self._allocate(trainer, logits.shape[1], device)
            check_index_range(index, self.table.num_samples)
        # Only gathered batches can repeat an index (DistributedSampler pads with duplicates).
        keep = "last" if self.preset == "official" else "first"
        self.table.write(index, probabilities, deduplicate=trainer.world_size > 1, keep=keep)

    def _clean_logits(self, trainer: pl.Trainer, pl_module: pl.LightningModule, clean: torch.Tensor) -> torch.Tensor:
        """The logits of the images before an input-rewriting callback mixed them (one forward, no side effects)."""
        if self.rewritten_inputs == "error":
            raise ValueError(
                "ProgressiveSelfKD(rewritten_inputs='error'): a mixing callback (MixUp, CutMix) mixed the rows of "
                "batch['image'], so training_step's logits are the mixed images' predictions, not the samples' own. "
                "Use rewritten_inputs='clean_forward' (one extra forward on the unmixed images) or drop the mixing."
            )
        # the precision plugin's context: under bf16-mixed the extra forward runs as the training forward does
        with torch.no_grad(), side_effect_free(pl_module), trainer.precision_plugin.forward_context():
            output = pl_module(clean)
        logits = logits_of(output, "ProgressiveSelfKD predicts the unmixed images with the module's forward, which")
        if logits.dim() != 2 or logits.shape[0] != len(clean):
            raise TypeError(
                f"ProgressiveSelfKD predicts the {len(clean)} unmixed images with the module's forward, which must "
                f"return (B, C) logits (or a dict with 'logits', or an object with .logits); its logits have shape "
                f"{tuple(logits.shape)}."
            )
        return logits

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After one epoch every index of the data set has been range-checked; later checks would only cost syncs.
        self._check_indices = self.table is None
        skipped = self.table.skipped_rows if self.table is not None else 0  # one sync an epoch
        if skipped > self._warned_skipped:
            rank_zero_warn(
                f"ProgressiveSelfKD: {skipped - self._warned_skipped} predictions of epoch {trainer.current_epoch} "
                "were not finite (NaN or inf logits) and were not stored; those samples keep their previous "
                "targets. The model diverged on those batches: lower the learning rate, clip gradients, or find them "
                "with Trainer(detect_anomaly=True)."
            )
            self._warned_skipped = skipped

    def _training_fingerprint(self, trainer: pl.Trainer) -> dict[str, Any] | None:
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        if dataset is not None:
            try:
                self._fingerprint = data_fingerprint(dataset)
            except TypeError:  # not sized
                self._fingerprint = None
        return self._fingerprint

    def _check_same_data(self, current: dict[str, Any] | None) -> None:
        saved = self._restored_fingerprint
        difference = fingerprint_difference(saved, current) if saved and current else None
        if difference:
            raise ValueError(
                f"The checkpoint's PS-KD table was made on other training data: {difference} (saved {saved}, now "
                f"{current}). Its rows are keyed by sample index, so they would refine other samples' targets. Resume "
                "with the data the run was started with, or start a new run (a fresh ProgressiveSelfKD)."
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        table = self.table.state_dict() if self.table is not None else self._restored_table
        fingerprint = self._fingerprint if self.table is not None else self._restored_fingerprint
        return {"alpha_T": self.alpha_T, "total_epochs": self.total_epochs, "table": table, "fingerprint": fingerprint}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_callback_state(state_dict)
        if state_dict.get("table") is not None:
            check_table_state(state_dict["table"])  # before anything is changed: a named error, not a raw one
        self.total_epochs = state_dict["total_epochs"]
        self._restored_table = state_dict["table"]
        self._restored_fingerprint = state_dict["fingerprint"]
        self.table = None
        if state_dict["alpha_T"] != self.alpha_T:
            rank_zero_warn(
                f"ProgressiveSelfKD: the checkpoint was trained with alpha_T={state_dict['alpha_T']}, this callback "
                f"has alpha_T={self.alpha_T}; the new value is used from here on."
            )

    def _resolve_total_epochs(self, trainer: pl.Trainer) -> None:
        wanted = self.requested_total_epochs or trainer.max_epochs
        if self.total_epochs is not None:  # restored from a checkpoint
            if wanted in (None, -1, self.total_epochs):
                return
            if self.preset == "official":  # the official loop reads --end_epoch afresh
                rank_zero_info(f"ProgressiveSelfKD(preset='official'): T changes from {self.total_epochs} to {wanted}.")
                self.total_epochs = int(wanted)
            else:  # the schedule does not change
                rank_zero_warn(
                    f"ProgressiveSelfKD: the run was started with T={self.total_epochs} epochs and now asks for "
                    f"{wanted}; the schedule keeps T={self.total_epochs} so alpha is the one the run started with. "
                    "Start a new run (or a fresh callback) to change it."
                )
            return
        if wanted is None or wanted < 1:
            raise ValueError(
                "ProgressiveSelfKD needs the total number of epochs T of its schedule: the Trainer has no "
                "max_epochs (training by steps?). Pass ProgressiveSelfKD(total_epochs=T)."
            )
        self.total_epochs = int(wanted)

    def _resolve_num_samples(self, trainer: pl.Trainer, required: bool = True) -> int | None:
        if self.num_samples is not None:
            return self.num_samples
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        try:
            return len(dataset)
        except TypeError:
            if not required:
                return None
            raise ValueError(
                "ProgressiveSelfKD cannot tell how many training samples there are (the training DataLoader has no "
                "sized dataset). Pass ProgressiveSelfKD(num_samples=N), N larger than every batch['index']."
            ) from None

    def _allocate(self, trainer: pl.Trainer, num_classes: int, device: torch.device) -> None:
        self.table = PredictionTable(
            self._resolve_num_samples(trainer), num_classes, self.storage, self.top_k, device=device
        )
