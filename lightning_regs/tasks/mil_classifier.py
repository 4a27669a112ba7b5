"""Bag classification (multiple-instance learning): an ImageClassifier over bags, with the attention's metrics."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAUROC, MulticlassAUROC
from typing_extensions import override

from lightning_regs._compat import attached_trainer
from lightning_regs.batch import INDEX, INSTANCE_MASK, INSTANCE_TARGET, StepBatch, read_inputs
from lightning_regs.callbacks.input_rewriting_callback import InputRewritingCallback
from lightning_regs.functional.mil import masked_attention, normalized_attention_entropy
from lightning_regs.functional.outputs import model_outputs
from lightning_regs.tasks.image_classifier import ImageClassifier
from lightning_regs.tasks.loss_terms import LossTerm
from lightning_regs.tasks.optim import OptimizerName, SchedulerName

__all__ = ["MILClassifier"]

STAGES = ("train", "val", "test")


class MILClassifier(ImageClassifier):
    """Classify bags of instances (``batch["image"]`` ``(B, N, ...)``, one ``target`` per bag) with cross-entropy.

    The model (``backbone``) is called as ``backbone(bags, instance_mask)`` when the batch pads its bags
    (``instance_mask`` has a False), else as ``backbone(bags)`` (batch size 1, the papers' setting, or bags of one
    size). It returns the bag logits, and for the attention's metrics and AEM its pre-softmax ``attention`` scores
    (``(B, N)`` or ``(B, heads, N)``): :class:`~lightning_regs.models.AttentionMIL` does, and so may any model
    returning ``{"logits": ..., "attention": ...}`` or an object with those fields. Add AEM with
    ``loss_terms=[AttentionEntropyTerm(weight=0.1)]``.

    Non-finite inputs and labels follow :class:`ImageClassifier`'s rule (``nonfinite``, ``ignore_index``): a bag with a
    NaN or inf instance feature (padding included) is a non-finite input; in evaluation it is left out of every
    metric, the attention's included.

    Logs what :class:`ImageClassifier` logs (bag ``loss``, ``acc``, ``ece``), plus ``val/auroc`` and ``test/auroc``
    (class 1's probability for two classes, macro one-vs-rest otherwise), ``<stage>/attention_entropy`` (``H / log N``
    per bag, averaged: 1 uniform, 0 on one instance) and, where the batch has ``instance_target``,
    ``<stage>/instance_auroc``: how well the attention ranks the key instances above the others, over the instances
    of bags whose class is not 0 (localisation; class 0 is the negative bag class), each scored by its attention
    weight relative to uniform (softmax weight × the bag's N, averaged over heads).

    The defaults are AEM's recipe: AdamW, lr 1e-4, weight decay 1e-5, cosine decay to 0.

    Args:
        backbone: the MIL model (see above).
        num_classes: the number of bag classes.
        optimizer, lr, weight_decay, scheduler: as :class:`ImageClassifier`'s, with AEM's defaults.
        loss_terms: :class:`~lightning_regs.tasks.LossTerm` modules added to the training loss (AEM's).
        **kwargs: the other :class:`ImageClassifier` arguments.

    Example::

        >>> from lightning_regs.models import AttentionMIL
        >>> from lightning_regs.tasks import AttentionEntropyTerm
        >>> task = MILClassifier(AttentionMIL(in_features=64), loss_terms=[AttentionEntropyTerm(weight=0.1)])
        >>> batch = {"image": torch.randn(2, 5, 64), "target": torch.tensor([0, 1]),
        ...          "instance_mask": torch.tensor([[True] * 5, [True] * 3 + [False] * 2])}
        >>> out = task.training_step(batch, 0)
        >>> out["logits"].shape
        torch.Size([2, 2])
    """

    reserved_term_names = ImageClassifier.reserved_term_names | {"auroc", "attention_entropy", "instance_auroc"}

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 2,
        optimizer: OptimizerName = "adamw",
        lr: float = 1e-4,
        weight_decay: float = 1e-5,
        scheduler: SchedulerName = "cosine",
        loss_terms: Sequence[LossTerm] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            backbone,
            num_classes,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            scheduler=scheduler,
            loss_terms=loss_terms,
            **kwargs,
        )
        self._takes_mask = _takes_second_argument(backbone)
        self._bag_metrics_seen: dict[str, set[str]] = {"val": set(), "test": set()}
        for stage in STAGES:
            self.metrics[f"{stage}_attention_entropy"] = MeanMetric()
            self.metrics[f"{stage}_instance_auroc"] = BinaryAUROC()
        for stage in ("val", "test"):
            self.metrics[f"{stage}_auroc"] = (
                BinaryAUROC() if num_classes == 2 else MulticlassAUROC(num_classes, average="macro")
            )

    @override
    def on_fit_start(self) -> None:
        super().on_fit_start()
        rewriting = [type(c).__name__ for c in self.trainer.callbacks if isinstance(c, InputRewritingCallback)]
        if rewriting:
            raise ValueError(
                f"{', '.join(rewriting)} rewrites batch['image'] row by row, without regard to which of a bag's padded "
                "instances are real: mixed bags would blend instances with padding. MILClassifier trains without "
                "input-rewriting callbacks; remove them (target callbacks such as LabelSmoothing work on bag labels)."
            )

    @override
    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None) if attached_trainer(self) is not None else None
        width = getattr(datamodule, "feature_dim", None)
        expected = getattr(self.backbone, "in_features", None)
        encoded = getattr(self.backbone, "encoder", None) is not None  # then in_features is the encoder's width
        if isinstance(width, int) and isinstance(expected, int) and not encoded and width != expected:
            raise ValueError(
                f"{type(datamodule).__name__} serves instance features of width {width} but "
                f"{type(self.backbone).__name__}(in_features={expected}): set in_features={width} "
                f"(--model.init_args.backbone.init_args.in_features={width})."
            )

    @override
    def forward(self, bags: torch.Tensor, instance_mask: torch.Tensor | None = None) -> Any:
        """The model's output on ``bags``; the mask is passed only when it pads (see the class docstring)."""
        if instance_mask is None or bool(instance_mask.all()):
            return self.backbone(bags)
        if not self._takes_mask:
            raise TypeError(
                f"The batch pads bags of different sizes (instance_mask), but {type(self.backbone).__name__}.forward "
                "takes no instance_mask argument: give it one, forward(bags, instance_mask=None), and attend only "
                "to the real instances, or load one bag per batch (batch_size=1, the papers' setting)."
            )
        return self.backbone(bags, instance_mask)

    @override
    def _forward_outputs(self, step: StepBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        batch = step.batch if isinstance(step.batch, Mapping) else {}
        mask = batch.get(INSTANCE_MASK)
        outputs = self._outputs(self(step.image, mask))
        self.check_logits(outputs["logits"])
        self._log_bag_metrics(outputs, step, mask, batch.get(INSTANCE_TARGET))
        return outputs, self._loss_over_labelled_rows(outputs["logits"], step)

    def _stage(self) -> str | None:
        if attached_trainer(self) is None:
            return None
        if self.trainer.training:
            return "train"
        if self.trainer.validating or self.trainer.sanity_checking:
            return "val"
        return "test" if self.trainer.testing else None

    @torch.no_grad()
    def _log_bag_metrics(
        self,
        outputs: Mapping[str, torch.Tensor],
        step: StepBatch,
        mask: torch.Tensor | None,
        instance_target: torch.Tensor | None,
    ) -> None:
        stage = self._stage()
        if stage is None:
            return
        if stage != "train":
            probabilities = outputs["logits"].float().softmax(dim=-1)
            scores = probabilities[:, 1] if self.num_classes == 2 else probabilities
            self.metrics[f"{stage}_auroc"].update(scores, step.labels)
            self._log_bag_metric(stage, "auroc")
        attention = outputs.get("attention")
        if attention is None:
            return
        self.metrics[f"{stage}_attention_entropy"].update(normalized_attention_entropy(attention.detach(), mask))
        self._log_bag_metric(stage, "attention_entropy")
        if instance_target is None:
            return
        # Each instance's attention weight relative to uniform (weight × N, mean over heads): unlike the raw scores it
        # ignores a shift of a bag's scores, which the softmax ignores too, and it compares bags of different sizes.
        heads = attention.detach().float()
        heads = heads if heads.dim() == 3 else heads.reshape(heads.shape[0], 1, -1)
        real = mask if mask is not None else torch.ones_like(instance_target, dtype=torch.bool)
        relative = masked_attention(heads, real).mean(dim=1) * real.sum(dim=1, keepdim=True)
        known = (instance_target >= 0) & (step.labels != 0)[:, None] & real
        self.metrics[f"{stage}_instance_auroc"].update(relative[known], (instance_target[known] > 0).long())
        self._log_bag_metric(stage, "instance_auroc")

    def _log_bag_metric(self, stage: str, name: str) -> None:
        # Training logs at every step (a skipped step is skipped on every rank). Evaluation logs at the epoch's end
        # (:meth:`_log_evaluated_bag_metrics`): a rank whose batch had no finite bag adds nothing to the metric, and
        # logging per step would then register the metrics in another order on that rank, which pairs the epoch-end
        # syncs up wrongly and hangs.
        if stage == "train":
            self.log(f"{stage}/{name}", self.metrics[f"{stage}_{name}"], on_step=False, on_epoch=True)
        else:
            self._bag_metrics_seen[stage].add(name)

    def _log_evaluated_bag_metrics(self, stage: str) -> None:
        names = ("auroc", "attention_entropy", "instance_auroc")
        seen = torch.tensor([float(name in self._bag_metrics_seen[stage]) for name in names], device=self.device)
        trainer = attached_trainer(self)
        if trainer is not None and trainer.world_size > 1:
            seen = trainer.strategy.reduce(seen, reduce_op="sum")  # what any rank updated, every rank logs
        self._bag_metrics_seen[stage] = set()
        for name, count in zip(names, seen.tolist(), strict=True):
            if count > 0:
                self.log(f"{stage}/{name}", self.metrics[f"{stage}_{name}"])

    @override
    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_evaluated_bag_metrics("val")

    @override
    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_evaluated_bag_metrics("test")

    def _outputs(self, output: Any) -> dict[str, torch.Tensor]:
        try:
            return model_outputs(output)
        except TypeError as error:
            raise TypeError(
                f"{error} For MILClassifier return {{'logits': logits, 'attention': scores}} (pre-softmax scores, "
                "(B, N) or (B, heads, N): the attention metrics and AEM read them), or an object with those fields "
                "such as lightning_regs.models.MILOutput."
            ) from None

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """Each bag's class probabilities, and its attention over its instances for heat maps.

        Returns a dict: ``probabilities`` ``(B, C)``; ``attention`` ``(B, heads, N)``, the softmax weights over each
        bag's real instances (0 on padding), when the model returns its scores; ``instance_mask`` ``(B, N)``; and
        ``index`` ``(B,)`` when the batch has it (a bag DataModule's ``datasets[split].slide_ids[index]`` names the
        slide; ``predict`` reads the test split).
        """
        mask = batch.get(INSTANCE_MASK) if isinstance(batch, Mapping) else None
        bags = read_inputs(batch)
        outputs = self._outputs(self(bags, mask))
        result = {"probabilities": outputs["logits"].float().softmax(dim=-1)}
        if mask is None:
            mask = torch.ones(bags.shape[:2], dtype=torch.bool, device=bags.device)
        if "attention" in outputs:
            scores = outputs["attention"]
            scores = scores if scores.dim() == 3 else scores.reshape(scores.shape[0], 1, -1)
            result["attention"] = masked_attention(scores.float(), mask)
        result[INSTANCE_MASK] = mask
        if isinstance(batch, Mapping) and INDEX in batch:
            result[INDEX] = batch[INDEX]
        return result


def _takes_second_argument(model: nn.Module) -> bool:
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return True
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in parameters)
