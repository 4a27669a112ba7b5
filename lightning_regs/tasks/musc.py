"""``MuScZeroShot``: MuSc's zero-shot anomaly maps and scores (Li et al., ICLR 2024) as a test-only task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from typing_extensions import override

from lightning_regs.batch import CATEGORY, IMAGE, INDEX, LABEL, MASK
from lightning_regs.distributed import all_gather_variable, unique_by_index
from lightning_regs.functional._checks import check_int, check_int_ids, check_number, check_range_pair
from lightning_regs.functional.musc import musc_anomaly_maps, rscin
from lightning_regs.models.encoder_weights import IMAGENET_MEAN, IMAGENET_STD, STAND_IN
from lightning_regs.models.frozen_encoder import FrozenEncoder
from lightning_regs.tasks.anomaly_evaluation import AnomalyEvaluation
from lightning_regs.tasks.anomaly_steps import category_name, log_anomaly_results
from lightning_regs.tasks.input_checks import report_nonfinite_inputs
from lightning_regs.trusted_loading import TrustedCheckpointLoading

__all__ = ["MuScZeroShot"]


def _triple(owner: str, name: str, values: Sequence[float], positive: bool) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 3:
        raise ValueError(f"{owner}: {name} must be 3 numbers (one per RGB channel), got {values!r}.")
    return tuple(check_number(owner, name, v, low=0.0, low_open=True) if positive else check_number(owner, name, v)
                 for v in values)  # fmt: skip


def _require_two(count: int, where: str) -> None:
    if count < 2:
        raise ValueError(
            f"MuScZeroShot scores test images against each other and got {count} distinct image(s) in {where}; it "
            "needs at least 2 (the paper scores a whole category's test set at once)."
        )


class MuScZeroShot(TrustedCheckpointLoading, pl.LightningModule):
    """MuSc: every test image's patches scored against all the other test images; nothing is trained.

    ``test_step`` (and ``validation_step``, ``predict_step``) only encode: each image's chosen ``layers`` of a frozen
    :class:`~lightning_regs.models.FrozenEncoder`, a global feature (the L2-normalized spatial mean of the last layer)
    and its ``index`` are kept on CPU. At the epoch's end every rank gathers all ranks' features and keeps each
    ``index`` once (``DistributedSampler``'s padded duplicates count once), scores *its own* images against the whole
    set (:func:`~lightning_regs.functional.musc.musc_anomaly_maps`: LNAMD for each degree, mutual scoring with the
    interval average, the mean over layers and degrees), takes each map's maximum as the image score, gathers the scores
    and re-scores them with RsCIN (:func:`~lightning_regs.functional.musc.rscin`) on the whole set;
    :class:`~lightning_regs.tasks.AnomalyEvaluation` then gathers the maps (resized bilinearly to the masks,
    ``align_corners=True`` as the official code) and logs ``<stage>/num_images`` and the 7 metrics
    (``<stage>/image_auroc``, ``image_ap``, ``image_f1_max``, ``pixel_auroc``, ``pixel_ap``, ``pixel_f1_max``,
    ``pixel_aupro``). So every value equals the one-process value whatever the number of ranks, and each rank computes
    only its share of the mutual scoring. A multi-class set (batches carrying several ``category`` ids) is scored one
    category at a time, as the paper does: images are scored against their own category's images only, RsCIN re-scores
    within the category, and the metrics are logged per category and as their mean. ``predict`` leaves each rank's
    ``{"index", "score", "anomaly_map"}`` in :attr:`predictions` (no label needed). Images with a NaN or inf pixel are
    left out and counted in ``<stage>/nonfinite_inputs``. ``fit`` is a named error: there is nothing to train (run
    ``lightning-regs test``, no checkpoint needed). Fewer than 2 distinct images is a named error.

    Memory: the features of every image, ``sum_l C_l h_l w_l`` float32 values each, on every rank's CPU (and on its
    device while scoring), plus ``chunk_size * N * h_0 * w_0`` distance values; time grows as ``N^2``.

    Args:
        encoder: :class:`~lightning_regs.models.FrozenEncoder`'s ``name``. The default, the offline EfficientNet-Lite0
            stand-in, is not comparable to the paper's CLIP ViT-L/14-336 (``"timm:vit_large_patch14_clip_336"``
            with ``layers=[5, 11, 17, 23]`` and ``image_size=518`` is the paper's setting, downloaded by timm).
        encoder_weights: ``FrozenEncoder``'s ``weights`` (``"pretrained"``, a state-dict path, or None: random).
        layers: the encoder layers scored (each separately, then averaged); the first sets the map's grid.
        image_size: side the images are resized to before the encoder (bilinear; also the ViT's position-embedding
            size); None keeps the DataModule's size. Maps are resized back to the masks' size.
        degrees: LNAMD aggregation degrees ``r`` (odd), paper ``[1, 3, 5]``.
        interval: ``(lo, hi)`` fractions of the sorted nearest distances to the other images averaged, paper
            ``(0.0, 0.3)``.
        rscin_k: RsCIN's neighbourhood sizes, official ``[1, 2, 3]`` for MVTec AD (``[1, 8, 9]`` for VisA); ``[]``
            switches RsCIN off (image score: the map's maximum).
        chunk_size: query patches scored at once (bounds the memory, not the result).
        data_mean, data_std: the normalization the DataModule applied (ImageNet's, the MVTec DataModules' default);
            undone before the encoder's own normalization is applied.
        pixel_bins: ``AnomalyEvaluation``'s ``pixel_auroc_bins`` (None: exact).

    Example::

        >>> task = MuScZeroShot("torchvision:resnet18", encoder_weights=None, layers=[1, 2], degrees=[1, 3])
        >>> images = torch.randn(3, 3, 32, 32)
        >>> scores, maps = task.score_images(images)
        >>> tuple(scores.shape), tuple(maps.shape)
        ((3,), (3, 32, 32))
    """

    def __init__(
        self,
        encoder: str = STAND_IN,
        encoder_weights: str | None = "pretrained",
        layers: list[int] | None = None,
        image_size: int | None = None,
        degrees: list[int] | None = None,
        interval: tuple[float, float] = (0.0, 0.3),
        rscin_k: list[int] | None = None,
        chunk_size: int = 1024,
        data_mean: Sequence[float] = IMAGENET_MEAN,
        data_std: Sequence[float] = IMAGENET_STD,
        pixel_bins: int | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.save_hyperparameters()
        self.degrees = check_int_ids(owner, "degrees", [1, 3, 5] if degrees is None else degrees, low=1)
        if any(r % 2 == 0 for r in self.degrees):
            raise ValueError(f"{owner}: degrees must be odd (centred neighbourhoods), got {self.degrees}.")
        self.interval = check_range_pair(owner, "interval", interval)
        if self.interval[0] < 0 or self.interval[1] > 1:
            raise ValueError(f"{owner}: interval must be (lo, hi) with 0 <= lo < hi <= 1, got {interval!r}.")
        self.rscin_k = check_int_ids(
            owner, "rscin_k", [1, 2, 3] if rscin_k is None else rscin_k, low=1, allow_empty=True
        )
        self.chunk_size = check_int(owner, "chunk_size", chunk_size, low=1)
        self.image_size = None if image_size is None else check_int(owner, "image_size", image_size, low=8)
        self.pixel_bins = None if pixel_bins is None else check_int(owner, "pixel_bins", pixel_bins, low=1)
        mean, std = _triple(owner, "data_mean", data_mean, False), _triple(owner, "data_std", data_std, True)
        chosen = [1, 2, 3] if layers is None else layers
        self.encoder = FrozenEncoder(encoder, chosen, encoder_weights, image_size)
        # x_encoder = (x_data * data_std + data_mean - encoder.mean) / encoder.std, one affine map per channel
        scale = torch.tensor(std) / torch.tensor(self.encoder.std)
        shift = (torch.tensor(mean) - torch.tensor(self.encoder.mean)) / torch.tensor(self.encoder.std)
        self.register_buffer("_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_shift", shift.view(1, 3, 1, 1), persistent=False)
        self._kept: dict[str, list[Any]] = {}
        self._warned_stages: set[str] = set()
        self.predictions: dict[str, torch.Tensor] | None = None

    # Nothing to train.
    @override
    def configure_optimizers(self) -> None:
        return None

    @override
    def setup(self, stage: str) -> None:
        if stage == "fit":
            raise RuntimeError(
                "MuScZeroShot is zero-shot: it trains nothing and scores the test images against each other. Run "
                "`lightning-regs test --config ...` (Trainer.test; no checkpoint is needed), not fit."
            )

    @override
    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.setup("fit")

    # Encoding.
    def encode(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The chosen layers' maps ``(B, C_l, h_l, w_l)`` and the global features ``(B, D)`` of a DataModule batch."""
        x = images * self._scale.to(images) + self._shift.to(images)
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        maps = [m.float() for m in self.encoder(x).maps()]
        return maps, F.normalize(maps[-1].mean((-2, -1)), dim=-1)

    def score_images(
        self, images: torch.Tensor, global_features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores ``(N,)`` and anomaly maps ``(N, H, W)`` of one set of ``N >= 2`` images, in one process."""
        _require_two(images.shape[0], "the given images")
        maps, features = self.encode(images)
        features = features if global_features is None else global_features
        scores, grids = self._score(maps, None)
        return rscin(scores.double(), features.double(), self.rscin_k), self._resize(grids, tuple(images.shape[-2:]))

    def _score(self, maps: list[torch.Tensor], queries: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        grids = musc_anomaly_maps(maps, self.degrees, self.interval, self.chunk_size, queries)
        scores = grids.flatten(1).amax(1)  # the maximum of the bilinearly upsampled map (align_corners=True)
        return scores, grids

    @staticmethod
    def _resize(grids: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(grids[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]

    def _collect(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        images = batch[IMAGE]
        finite = torch.isfinite(images.flatten(1)).all(1)
        dropped = int((~finite).sum())
        left_out = f"the mutual scoring and every {stage} metric"
        if stage != "predict":  # predict cannot log: the rows left out are missing from `predictions["index"]`
            where = f"a {stage} batch"
            report_nonfinite_inputs(self, self._warned_stages, stage, dropped, len(finite), where, left_out)
        if dropped:
            batch = {key: value[finite] if torch.is_tensor(value) else value for key, value in batch.items()}
        if INDEX not in batch:
            raise KeyError(
                "MuScZeroShot needs each image's `index` (every lightning_regs DataModule writes it; wrap your data "
                "set in lightning_regs.datamodules.IndexedDataset)."
            )
        maps, features = self.encode(batch[IMAGE])
        kept = self._kept.setdefault(stage, [])
        extra = {key: batch[key].detach().cpu() for key in (LABEL, MASK, CATEGORY) if key in batch}
        kept.append(([m.cpu() for m in maps], features.cpu(), batch[INDEX].detach().cpu().long(), extra))
        self._size = tuple(batch[IMAGE].shape[-2:])

    def _score_stage(self, stage: str) -> dict[str, torch.Tensor]:
        """Gather every rank's features, score this rank's images against all, RsCIN on all scores."""
        kept = self._kept.pop(stage, [])
        device = self.device
        num_layers = len(self.encoder.layers)
        if kept:
            local_maps = [torch.cat([k[0][i] for k in kept]) for i in range(num_layers)]
            local_features, local_index = torch.cat([k[1] for k in kept]), torch.cat([k[2] for k in kept])
        else:  # a rank without images still joins the collectives
            local_maps = [torch.zeros(0, c, 1, 1) for c in self.encoder.channels]
            local_features, local_index = torch.zeros(0, self.encoder.channels[-1]), torch.zeros(0, dtype=torch.long)
        has_groups = bool(kept) and CATEGORY in kept[0][3]
        local_groups = torch.cat([k[3][CATEGORY] for k in kept]).long() if has_groups else torch.zeros_like(local_index)
        gathered = [all_gather_variable(t.to(device)) for t in (local_index, local_groups, local_features, *local_maps)]
        index, groups, features, *maps = unique_by_index(*gathered)
        _require_two(index.numel(), f"the {stage} set")
        local_positions = torch.searchsorted(index, local_index.to(device))
        scores = torch.zeros(len(local_index), device=device)
        grids = torch.zeros(len(local_index), *maps[0].shape[-2:], device=device)
        for group in groups.unique().tolist():  # each category's images are scored against their own category only
            members = (groups == group).nonzero().flatten()
            _require_two(members.numel(), f"category {category_name(self, group)!r} of the {stage} set")
            mine = (local_groups.to(device) == group).nonzero().flatten()
            if mine.numel():
                queries = torch.searchsorted(members, local_positions[mine])
                scores[mine], grids[mine] = self._score([m[members] for m in maps], queries)
        all_index, all_scores = unique_by_index(
            all_gather_variable(local_index.to(device)), all_gather_variable(scores)
        )
        rescored = torch.zeros_like(all_scores, dtype=torch.float64)
        for group in groups.unique().tolist():
            members = groups == group
            rescored[members] = rscin(all_scores[members].double(), features[members].double(), self.rscin_k)
        scores = rescored[torch.searchsorted(all_index, local_index.to(device))]
        result = {"index": local_index, "score": scores.cpu(), "grid": grids.cpu(), CATEGORY: local_groups}
        for key in (LABEL, MASK):
            if kept and key in kept[0][3]:
                result[key] = torch.cat([k[3][key] for k in kept])
        return result

    def _report(self, stage: str) -> None:
        result = self._score_stage(stage)
        evaluation = AnomalyEvaluation(pixel_auroc_bins=self.pixel_bins, warn_undefined=False)
        if MASK not in result or LABEL not in result:
            raise KeyError(f"MuScZeroShot: the {stage} batches need `label` and `mask` (MVTec AD's batch keys).")
        masks = result[MASK]
        maps = self._resize(result["grid"], tuple(masks.shape[-2:])) if len(masks) else masks[:, 0]
        evaluation.update(result["score"], result[LABEL], maps, masks, result[INDEX], result[CATEGORY])
        log_anomaly_results(self, stage, evaluation.compute())

    @override
    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._collect(batch, "test")

    @override
    def on_test_epoch_end(self) -> None:
        self._report("test")

    @override
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._collect(batch, "val")

    @override
    def on_validation_epoch_end(self) -> None:
        self._report("val")

    @override
    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._collect(batch, "predict")

    @override
    def on_predict_epoch_end(self) -> None:
        result = self._score_stage("predict")
        grids = result.pop("grid")
        result["anomaly_map"] = self._resize(grids, self._size)[:, None]  # (N, 1, H, W), as the other tasks
        self.predictions = {key: result[key] for key in ("index", "score", "anomaly_map")}
