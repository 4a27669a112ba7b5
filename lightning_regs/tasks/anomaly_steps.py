"""The evaluation steps every anomaly task shares: collect scores and maps, log the suite at the epoch's end."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_regs._compat import attached_trainer
from lightning_regs.batch import CATEGORY, IMAGE, INDEX, LABEL, MASK
from lightning_regs.tasks.anomaly_evaluation import METRICS, AnomalyEvaluation
from lightning_regs.tasks.input_checks import report_nonfinite_inputs

__all__ = ["AnomalyEvaluationSteps", "category_name", "log_anomaly_results"]


def category_name(module: Any, group: int) -> str:
    """The name of category ``group`` of the attached DataModule (its ``category_names``), else ``category_<id>``."""
    trainer = attached_trainer(module)
    names = getattr(getattr(trainer, "datamodule", None), "category_names", None)
    return names[group] if names is not None and 0 <= group < len(names) else f"category_{group}"


def log_anomaly_results(module: Any, stage: str, results: dict[str, Any]) -> None:
    """Log ``<stage>/num_images`` and every defined metric of an :class:`AnomalyEvaluation` result; with several
    categories, the mean as ``<stage>/<metric>`` and each category's as ``<stage>/<category>/<metric>``."""
    owner = type(module).__name__
    module.log(f"{stage}/num_images", float(results["num_images"]))
    parts = [(f"{stage}/{category_name(module, g)}", r) for g, r in results.get("per_group", {}).items()]
    for prefix, result in [(stage, results), *parts]:
        if result["image_auroc"].isnan():
            rank_zero_warn(f"{owner}: the {prefix} set holds one label only; no AUROC is logged.")
            continue
        for name in METRICS:
            if not result[name].isnan():  # pixel metrics need anomalous (AUROC, AUPRO: and normal) pixels
                module.log(f"{prefix}/{name}", result[name].float().to(module.device))


class AnomalyEvaluationSteps:
    """Mixin (before ``LightningModule`` in the bases) giving an anomaly task its validation, test and predict steps.

    The task implements :meth:`anomaly_scores` and calls :meth:`setup_anomaly_evaluation` in ``__init__``. Each
    evaluation batch (MVTec dicts: ``image``, ``label``, ``mask``, ``index``) leaves images with a NaN or inf pixel
    out (counted in ``<stage>/nonfinite_inputs``, one warning per stage) and adds the rest to an
    :class:`~lightning_regs.tasks.AnomalyEvaluation`; an empty batch still updates it, so every rank gathers at the
    epoch's end. There the task logs ``<stage>/num_images`` and the seven :data:`METRICS` (all ranks gathered, each
    index once); a set with one label logs none of them (one warning), and a pixel metric its masks leave undefined
    is not logged. Batches of several categories (their ``category``) are scored per category: ``<stage>/<metric>``
    is the mean over the categories and ``<stage>/<category>/<metric>`` each one's. Predict returns
    ``anomaly_map``, ``score`` and ``index`` per batch.

    Example::

        >>> import lightning.pytorch as pl
        >>> class Brightness(AnomalyEvaluationSteps, pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.setup_anomaly_evaluation(pixel_bins=None)
        ...     def anomaly_scores(self, image):
        ...         maps = image.mean(1, keepdim=True)
        ...         return maps, maps.flatten(1).amax(1)
        >>> maps, scores = Brightness().anomaly_scores(torch.zeros(2, 3, 4, 4))
        >>> maps.shape, scores.shape
        (torch.Size([2, 1, 4, 4]), torch.Size([2]))
    """

    def setup_anomaly_evaluation(self, pixel_bins: int | None) -> None:
        """Per-stage metric state; ``pixel_bins``: :class:`AnomalyEvaluation`'s ``pixel_auroc_bins`` (None: exact)."""
        self._evaluations: dict[str, AnomalyEvaluation] = {}  # by stage; not submodules: no state, CPU states
        self._warned_stages: set[str] = set()
        self._pixel_bins = pixel_bins
        self._validated_in_fit = False

    def anomaly_scores(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps ``(B, 1, H, W)`` at the image's size and image scores ``(B,)`` (raw: any real values)."""
        raise NotImplementedError(f"{type(self).__name__} must implement anomaly_scores(image) -> (maps, scores).")

    def _collect(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        image = batch[IMAGE]
        finite = torch.isfinite(image.flatten(1)).all(1)
        dropped = int((~finite).sum())  # one read per step: images with NaN or inf count in no metric
        left_out = f"every {stage} metric ({stage}/image_auroc, {stage}/pixel_auroc, ...) and {stage}/num_images"
        report_nonfinite_inputs(self, self._warned_stages, stage, dropped, len(finite), f"a {stage} batch", left_out)
        if dropped:
            batch = {key: value[finite] for key, value in batch.items()}
            image = batch[IMAGE]
        if len(image):
            maps, scores = self.anomaly_scores(image)
        else:  # nothing to score, but the stage's metric is updated on every rank
            maps, scores = image.new_zeros((0, 1, *image.shape[-2:])), image.new_zeros(0)
        if stage not in self._evaluations:
            self._evaluations[stage] = AnomalyEvaluation(pixel_auroc_bins=self._pixel_bins, warn_undefined=False)
        self._evaluations[stage].update(scores, batch[LABEL], maps, batch[MASK], batch[INDEX], batch.get(CATEGORY))

    def _report(self, stage: str) -> None:
        evaluation = self._evaluations.get(stage)
        if evaluation is None or evaluation.update_count == 0:
            return
        results = evaluation.compute()  # all ranks gathered, each index once
        evaluation.reset()
        log_anomaly_results(self, stage, results)

    @override
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._collect(batch, "val")

    @override
    def on_validation_epoch_end(self) -> None:
        self._report("val")
        if not attached_trainer(self).sanity_checking:
            self._validated_in_fit = True

    @override
    def on_fit_start(self) -> None:
        self._validated_in_fit = False

    @override
    def on_fit_end(self) -> None:
        trainer = attached_trainer(self)
        if self._validated_in_fit or trainer.limit_val_batches == 0 or trainer.datamodule is None:
            return  # validated, validation switched off, or no DataModule giving validation data
        every = trainer.check_val_every_n_epoch
        rank_zero_warn(
            f"{type(self).__name__}: fit ended after {trainer.current_epoch} epoch(s) without a validation run "
            f"(check_val_every_n_epoch={every}), so no val/* metric was logged, and a ModelCheckpoint that saves "
            "after validation saved nothing. When you shorten a run, shorten check_val_every_n_epoch with it (e.g. "
            "--trainer.max_epochs=3 --trainer.check_val_every_n_epoch=3), or run `lightning-regs test` on a saved "
            "checkpoint."
        )

    @override
    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._collect(batch, "test")

    @override
    def on_test_epoch_end(self) -> None:
        self._report("test")

    @override
    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        maps, scores = self.anomaly_scores(batch[IMAGE])
        return {"anomaly_map": maps, "score": scores, INDEX: batch[INDEX]}
