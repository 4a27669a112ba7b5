"""A trivial anomaly scorer (distance to the mean training image) that exercises MVTec AD data and metrics."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lightning_regs.datamodules.batch import IMAGE, INDEX
from lightning_regs.functional.anomaly import image_auroc, pixel_auroc
from lightning_regs.functional.distributed import gather_unique_by_index

__all__ = ["MeanImageAnomalyBaseline"]


class MeanImageAnomalyBaseline(pl.LightningModule):
    """Anomaly map = channel mean of ``|image - mean training image|``; image score = the map's mean.

    Not an anomaly detection method: a floor that checks the data pipeline and the metrics end to
    end. ``fit`` (one epoch is enough; it has no parameters and no optimizer) averages the training
    images; validation and test log ``<stage>/image_auroc``, ``<stage>/pixel_auroc`` and
    ``<stage>/num_images``, computed on raw scores after gathering all ranks and removing the
    duplicates ``DistributedSampler`` pads in (by ``index``), so they equal the single-process values.
    Without a fit the mean image is zero (the score is the mean absolute normalized pixel). Under
    DDP the training mean counts the sampler's padded images twice (a few images out of hundreds).

    Args:
        pixel_bins: ``None`` for the exact pixel AUROC (holds every pixel of the stage), or a number of
            bins for the memory-bounded binned AUROC over the observed score range.

    Example::

        >>> import torch
        >>> task = MeanImageAnomalyBaseline()
        >>> batch = {"image": torch.zeros(2, 3, 4, 4), "index": torch.tensor([0, 1])}
        >>> task.training_step(batch, 0); task.on_train_epoch_end()
        >>> task.anomaly_map(torch.ones(1, 3, 4, 4)).shape
        torch.Size([1, 1, 4, 4])
    """

    def __init__(self, pixel_bins: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.register_buffer("mean_image", torch.zeros(0))
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._outputs: dict[str, list[torch.Tensor]] = {}

    def configure_optimizers(self) -> None:
        return None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The buffer's shape is that of the data, unknown until the first batch: take the checkpoint's.
        saved = checkpoint.get("state_dict", {}).get("mean_image")
        if saved is not None:
            self.mean_image = torch.zeros_like(saved, device=self.mean_image.device)

    def anomaly_map(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` map of the channel-mean absolute difference to the mean training image."""
        reference = self.mean_image if self.mean_image.numel() else torch.zeros_like(image[0])
        return (image - reference).abs().mean(dim=1, keepdim=True)

    def on_train_epoch_start(self) -> None:
        self._sum, self._count = None, 0

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        image = batch[IMAGE].detach().double()
        self._sum = image.sum(0) if self._sum is None else self._sum + image.sum(0)
        self._count += image.shape[0]

    def on_train_epoch_end(self) -> None:
        self._update_mean()

    def on_validation_epoch_start(self) -> None:
        # Lightning validates at the end of a training epoch BEFORE on_train_epoch_end: use this epoch's mean.
        self._update_mean()

    def _update_mean(self) -> None:
        if self._sum is None:
            return
        total = self._sum.clone()  # the all-reduce works in place
        count = torch.tensor(float(self._count), dtype=torch.float64, device=total.device)
        if self._trainer is not None and self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
            count = self.trainer.strategy.reduce(count, reduce_op="sum")
        self.mean_image = (total / count).float()

    def _collect(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        maps = self.anomaly_map(batch[IMAGE])
        outputs = self._outputs.setdefault(stage, [])
        outputs.append(
            torch.cat(
                [batch[INDEX].double()[:, None], batch["label"].double()[:, None], maps.flatten(1).mean(1)[:, None]],
                dim=1,
            ).cpu()
        )
        self._outputs.setdefault(f"{stage}_maps", []).append(maps.cpu())
        self._outputs.setdefault(f"{stage}_masks", []).append(batch["mask"].to(torch.bool).cpu())

    def _report(self, stage: str) -> None:
        rows = self._outputs.pop(stage, [])
        maps = self._outputs.pop(f"{stage}_maps", [])
        masks = self._outputs.pop(f"{stage}_masks", [])
        if not rows:
            return
        table, maps, masks = torch.cat(rows), torch.cat(maps), torch.cat(masks)
        device = self.device  # the process group's backend decides where tensors must be (gloo: CPU, NCCL: CUDA)
        index, table, maps, masks = gather_unique_by_index(
            table[:, 0].long().to(device), table.to(device), maps.to(device), masks.to(device)
        )
        labels, scores = table[:, 1].long(), table[:, 2]
        self.log(f"{stage}/num_images", float(index.numel()))
        if labels.min() == labels.max():
            rank_zero_warn(f"MeanImageAnomalyBaseline: the {stage} set holds one label only; no AUROC is logged.")
            return
        self.log(f"{stage}/image_auroc", image_auroc(scores, labels).float())
        if masks.any() and not masks.all():
            self.log(f"{stage}/pixel_auroc", pixel_auroc(maps, masks, num_bins=self.hparams.pixel_bins).float())

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._collect(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._report("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._collect(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._report("test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        maps = self.anomaly_map(batch[IMAGE])
        return {"anomaly_map": maps, "score": maps.flatten(1).mean(1), INDEX: batch[INDEX]}
