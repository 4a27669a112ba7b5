"""A trivial anomaly scorer (distance to the mean training image) that exercises MVTec AD data and metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from typing_extensions import override

from lightning_regs._compat import attached_trainer
from lightning_regs.batch import IMAGE
from lightning_regs.tasks.anomaly_steps import AnomalyEvaluationSteps
from lightning_regs.tasks.input_checks import describe_nonfinite
from lightning_regs.trusted_loading import TrustedCheckpointLoading

__all__ = ["MeanImageAnomalyBaseline"]


class MeanImageAnomalyBaseline(AnomalyEvaluationSteps, TrustedCheckpointLoading, pl.LightningModule):
    """Anomaly map = channel mean of ``|image - mean training image|``; image score = the map's mean.

    Not an anomaly detection method: a floor that checks the data pipeline and the metrics end to
    end. At the start of ``fit`` (``on_train_start``) it averages the images of the training loader's
    data set, in float64, each of the ``W`` processes reading images ``rank, rank + W, ...`` (no
    sampler padding, so every image counts once) before an all-reduce of sums and counts: the mean
    equals the single-process one, whatever ``limit_train_batches`` says. It has no optimizer; the
    ``fit`` loop then runs its epoch without doing anything (``max_epochs=1``, and
    ``limit_train_batches=1`` spares the second read of the training set). Validation and test log
    ``<stage>/num_images`` and, through :class:`~lightning_regs.tasks.AnomalyEvaluation`, ``<stage>/image_auroc``,
    ``image_ap``, ``image_f1_max``, ``pixel_auroc``, ``pixel_ap``, ``pixel_f1_max`` and ``pixel_aupro`` (images with
    a NaN or inf pixel left out, counted in ``<stage>/nonfinite_inputs`` with one warning per stage; such training
    images are a named error), computed on raw scores after gathering all ranks and removing the duplicates
    ``DistributedSampler`` pads in (by ``index``), so they equal the single-process values. A stage whose images
    hold one label only logs none of them (one warning); a pixel metric undefined on the stage's masks is not
    logged. Validation, test and predict without a mean image (no ``fit``, no checkpoint loaded) are a named error;
    only the sanity-check validation, which runs before ``on_train_start`` (Lightning discards its metrics), scores
    against a zero mean image. The module
    holds one scalar parameter, ``ddp_anchor``, never used: ``DistributedDataParallel`` refuses to wrap a module
    without one.

    Args:
        pixel_bins: ``None`` for the exact pixel AUROC (sorts every pixel of the stage), or a number of
            bins for the binned AUROC over the observed score range (a histogram instead of a sort); the
            other pixel metrics are exact either way. Every anomaly map of the stage is kept (float32, on CPU)
            and gathered to every rank: memory is ``O(num_images * H * W)`` (see ``AnomalyEvaluation``).

    Example::

        >>> import torch
        >>> from lightning_regs.datamodules.batch import TensorDictDataset
        >>> task = MeanImageAnomalyBaseline()
        >>> train = TensorDictDataset(torch.arange(2.0).view(2, 1, 1, 1).expand(2, 3, 4, 4), torch.zeros(2))
        >>> task.fit_mean_image(train, batch_size=1)
        >>> task.mean_image[:, 0, 0].tolist(), task.anomaly_map(torch.ones(1, 3, 4, 4)).shape
        ([0.5, 0.5, 0.5], torch.Size([1, 1, 4, 4]))
    """

    def __init__(self, pixel_bins: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.register_buffer("mean_image", torch.zeros(0))
        self.ddp_anchor = nn.Parameter(torch.zeros(()))
        self.register_load_state_dict_pre_hook(self._adopt_saved_shape)
        self.setup_anomaly_evaluation(pixel_bins)

    @override
    def configure_optimizers(self) -> None:
        return None

    @override
    def configure_model(self) -> None:
        from lightning.pytorch.strategies import ModelParallelStrategy

        if attached_trainer(self) is not None and isinstance(self.trainer.strategy, ModelParallelStrategy):
            raise TypeError(
                "MeanImageAnomalyBaseline holds one mean image and trains nothing: there is nothing to shard under "
                "ModelParallelStrategy (FSDP2). Run it on one device or with DDP (strategy='ddp'), which it supports."
            )

    @staticmethod
    def _adopt_saved_shape(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # The mean's shape is that of the data, unknown until it is computed: take the saved one (checkpoints,
        # and the weights ddp_spawn hands back to the main process).
        saved = state_dict.get(f"{prefix}mean_image")
        if saved is not None:
            module.mean_image = torch.zeros_like(saved, device=module.mean_image.device)

    def anomaly_map(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` map of the channel-mean absolute difference to the mean training image."""
        reference = self.mean_image if self.mean_image.numel() else torch.zeros_like(image[0])
        return (image - reference).abs().mean(dim=1, keepdim=True)

    @torch.no_grad()
    def fit_mean_image(
        self,
        dataset: Dataset,
        batch_size: int = 32,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        """Set :attr:`mean_image` to the mean ``image`` of a map-style ``dataset`` (dict samples).

        Under an attached multi-process Trainer, rank ``r`` of ``W`` reads samples ``r, r + W, ...``
        and the sums and counts are all-reduced, so every sample counts exactly once.
        """
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(
                f"MeanImageAnomalyBaseline needs a map-style training data set (with __len__ and __getitem__), got "
                f"{type(dataset).__name__}; use MVTecADDataModule or a Dataset of dict samples."
            )
        if len(dataset) == 0:
            raise ValueError("MeanImageAnomalyBaseline: the training data set is empty; there is no mean image.")
        distributed = attached_trainer(self) is not None and self.trainer.world_size > 1
        rank, world_size = (self.global_rank, self.trainer.world_size) if distributed else (0, 1)
        shard = Subset(dataset, range(rank, len(dataset), world_size))
        loader = DataLoader(shard, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn)
        total: torch.Tensor | None = None
        for batch in loader:
            images = batch[IMAGE].to(self.device, torch.float64)
            total = images.sum(0) if total is None else total + images.sum(0)
        if total is None:  # more ranks than images: this rank adds zeros of the image shape
            total = torch.zeros(torch.as_tensor(dataset[0][IMAGE]).shape, dtype=torch.float64, device=self.device)
        count = torch.tensor(float(len(shard)), dtype=torch.float64, device=self.device)
        if distributed:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
            count = self.trainer.strategy.reduce(count, reduce_op="sum")
        if not bool(torch.isfinite(total).all()):  # one read per fit: a NaN pixel would make every score NaN
            raise ValueError(
                "MeanImageAnomalyBaseline: the training images hold non-finite pixels (NaN or inf), so the mean image "
                f"would be {describe_nonfinite(total)} and every anomaly score NaN. Check the training data (a corrupt "
                "file, a normalization dividing by a zero std) and remove or repair those images."
            )
        self.mean_image = (total / count).float()

    @override
    def on_train_start(self) -> None:
        loader = self.trainer.train_dataloader
        if not isinstance(loader, DataLoader):
            raise TypeError(
                f"MeanImageAnomalyBaseline needs a single training DataLoader, got {type(loader).__name__}; pass one "
                "loader (or a DataModule whose train_dataloader returns one)."
            )
        self.fit_mean_image(loader.dataset, loader.batch_size or 1, loader.num_workers, loader.collate_fn)

    @override
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        return None  # the mean was computed in on_train_start

    def _require_mean_image(self, stage: str) -> None:
        if self.mean_image.numel() == 0 and not self.trainer.sanity_checking:
            raise ValueError(
                f"MeanImageAnomalyBaseline has no mean image to {stage} against: nothing was fitted. Run fit first "
                "(lightning-regs fit logs val/* on the held-out set, the test set by default). fit takes no optimizer "
                "step, so Lightning writes no checkpoint: to test later, save one after fit (trainer.save_checkpoint) "
                "and pass it as --ckpt_path, or MeanImageAnomalyBaseline.load_from_checkpoint."
            )

    @override
    def on_validation_start(self) -> None:
        self._require_mean_image("validate")

    @override
    def on_test_start(self) -> None:
        self._require_mean_image("test")

    @override
    def on_predict_start(self) -> None:
        self._require_mean_image("predict")

    @override
    def anomaly_scores(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The maps of :meth:`anomaly_map` and their means, the image scores."""
        maps = self.anomaly_map(image)
        return maps, maps.flatten(1).mean(1)
