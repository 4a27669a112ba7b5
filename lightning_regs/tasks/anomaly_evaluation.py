"""``AnomalyEvaluation``: the field's image- and pixel-level anomaly metrics as one ``torchmetrics.Metric``."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors
from typing_extensions import override

from lightning_regs.distributed import unique_by_index
from lightning_regs.functional._checks import check_bool, check_int, check_number
from lightning_regs.functional.anomaly import _check_binary, image_auroc, pixel_auroc
from lightning_regs.functional.anomaly_metrics import _ap_and_f1_max, aupro

__all__ = ["AnomalyEvaluation"]

METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro")


def _gather_on_backend_device(tensor: torch.Tensor, group: Any | None = None) -> list[torch.Tensor]:
    """torchmetrics' all-gather, run on the device the backend handles (CUDA for NCCL), the parts back on CPU."""
    device = torch.device("cpu")
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    return [part.to(tensor.device) for part in gather_all_tensors(tensor.to(device), group=group)]


class AnomalyEvaluation(Metric):
    """Image AUROC/AP/F1-max and pixel AUROC/AP/F1-max/AUPRO of raw anomaly scores, one count per sample ``index``.

    ``update(scores, labels, maps, masks, index)`` keeps every sample's image score, label, anomaly map, mask and
    ``index`` on CPU; ``compute()`` gathers them from all processes (states concatenated, ``dist_reduce_fx="cat"``),
    keeps each ``index`` once (``DistributedSampler`` pads the last batches with repeated samples, so under DDP an
    image may be seen twice) and returns a dict of float64 scalars:

    * ``image_auroc``, ``image_ap``, ``image_f1_max`` (with ``image_f1_threshold``): on the image scores, NaN
      unless both labels are present;
    * ``pixel_ap``, ``pixel_f1_max`` (with ``pixel_f1_threshold``): over all pixels, NaN without an anomalous
      pixel; ``pixel_auroc`` and ``pixel_aupro`` (up to ``fpr_limit``): NaN unless both normal and anomalous
      pixels are present;
    * ``num_images``: the samples counted.

    With ``groups`` given to ``update`` (MVTec's ``category`` of a multi-class set) and more than one group seen,
    every metric is computed within each group and the dict holds their mean over the groups (NaN if a group leaves
    it undefined), ``num_images`` the total, and ``"per_group"``: ``{group id: that group's dict}``.

    Every metric is the :mod:`lightning_regs.functional.anomaly_metrics` / :mod:`~lightning_regs.functional.anomaly`
    function on the deduplicated set, so the values equal the single-process ones. An undefined metric is NaN
    with one warning per ``compute`` naming it and why (``warn_undefined=False`` silences it); a set without
    samples is a ``ValueError``. A sample seen twice must carry the same label and mask, and scores and maps
    within ``duplicate_tolerance`` times the largest absolute value of the set (another rank's batch may run
    other kernels; 0 asks for identity), else ``compute`` raises a ``ValueError`` naming the index.

    Memory: per image ``5·H·W + 21`` bytes on CPU (the map in float32, the mask and the label in uint8, the index and
    the score in 8 bytes each, the group in 4), e.g. 320 KiB for a 256x256 map. ``compute`` gathers the whole set onto
    every process (under NCCL through a CUDA copy of the states) and sorts all pixels: its peak is about 100 bytes per
    pixel of the set more (measured on 100 maps of 256x256: 100 B/pixel, 4-6 s on one CPU thread; the exact pixel
    AUROC's ranks are the largest step). Every rank must call ``update`` at least once before a distributed ``compute``
    (``DistributedSampler`` gives every rank a sample).

    Args:
        fpr_limit: the AUPRO integration limit, in (0, 1]; 0.3 in the MVTec AD papers.
        pixel_auroc_bins: ``None`` for the exact pixel AUROC, else the binned one over the observed score range
            (:func:`~lightning_regs.functional.anomaly.pixel_auroc`); the other metrics are exact either way.
        duplicate_tolerance: the relative tolerance between the scores (and maps) of a sample seen twice.
        warn_undefined: warn when a metric is NaN because a class is missing.
        **kwargs: ``torchmetrics.Metric`` options (``process_group``, ``dist_sync_fn``, ...).

    Example::

        >>> metric = AnomalyEvaluation()
        >>> maps = torch.zeros(3, 1, 4, 4)
        >>> maps[1, 0, 0, 0] = maps[2, 0, 1, 1] = 5.0
        >>> masks = (maps > 0).float()
        >>> metric.update(maps.amax((1, 2, 3)), torch.tensor([0, 1, 1]), maps, masks, torch.tensor([0, 1, 2]))
        >>> metric.update(maps[:1].amax((1, 2, 3)), torch.tensor([0]), maps[:1], masks[:1], torch.tensor([0]))
        >>> result = metric.compute()
        >>> int(result["num_images"]), [float(result[name]) for name in ("image_auroc", "pixel_aupro")]
        (3, [1.0, 1.0])
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        fpr_limit: float = 0.3,
        pixel_auroc_bins: int | None = None,
        duplicate_tolerance: float = 1e-4,
        warn_undefined: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dist_sync_fn", _gather_on_backend_device)
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.fpr_limit = check_number(owner, "fpr_limit", fpr_limit, low=0.0, high=1.0, low_open=True)
        bins = pixel_auroc_bins
        self.pixel_auroc_bins = None if bins is None else check_int(owner, "pixel_auroc_bins", bins, low=1)
        self.duplicate_tolerance = check_number(owner, "duplicate_tolerance", duplicate_tolerance, low=0.0)
        self.warn_undefined = check_bool(owner, "warn_undefined", warn_undefined)
        for name in ("index", "scores", "labels", "maps", "masks", "groups"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    @override
    def update(
        self,
        scores: torch.Tensor,
        labels: torch.Tensor,
        maps: torch.Tensor,
        masks: torch.Tensor,
        index: torch.Tensor,
        groups: torch.Tensor | None = None,
    ) -> None:
        """Add a batch: image ``scores`` ``(B,)``, 0/1 ``labels`` ``(B,)``, raw ``maps`` and 0/1 ``masks``
        ``(B, H, W)`` or ``(B, 1, H, W)``, each sample's ``index`` ``(B,)`` (the batch's ``index``) and, optionally,
        its group ``(B,)`` (the batch's ``category``; metrics are computed per group and averaged)."""
        owner = type(self).__name__
        size = index.shape[0] if index.dim() == 1 else -1
        if scores.dim() != 1 or labels.dim() != 1 or size < 0 or scores.shape[0] != size or labels.shape[0] != size:
            raise ValueError(
                f"{owner}.update takes one score, label and index per image, shapes (B,); got scores "
                f"{tuple(scores.shape)}, labels {tuple(labels.shape)}, index {tuple(index.shape)}. Reduce each map "
                "to a score first (e.g. its maximum)."
            )
        maps, masks = maps.detach(), masks.detach()
        maps = maps[:, 0] if maps.dim() == 4 and maps.shape[1] == 1 else maps
        masks = masks[:, 0] if masks.dim() == 4 and masks.shape[1] == 1 else masks
        if maps.dim() != 3 or maps.shape != masks.shape or maps.shape[0] != size:
            raise ValueError(
                f"{owner}.update: maps and masks must both be (B, H, W) or (B, 1, H, W) for the batch's {size} "
                f"images; got {tuple(maps.shape)} and {tuple(masks.shape)}. Resize the maps to the mask size."
            )
        if self.maps and self.maps[0].shape[1:] != maps.shape[1:]:
            raise ValueError(
                f"{owner}.update: maps of size {tuple(maps.shape[1:])} after {tuple(self.maps[0].shape[1:])}; every "
                "map of the set must have the same size (resize them to the masks' size)."
            )
        for name, values in (("scores", scores), ("maps", maps)):
            if not bool(torch.isfinite(values).all()):
                raise ValueError(
                    f"{owner}.update: {name} hold NaN or infinite values; every metric would be undefined. Leave "
                    "such images out (or clean the scores) before updating."
                )
        if groups is None:
            groups = torch.zeros(size, dtype=torch.long)
        elif (
            groups.shape != (size,)
            or groups.dtype.is_floating_point
            or not bool(((groups >= 0) & (groups < 2**31)).all())
        ):
            raise ValueError(
                f"{owner}.update: groups must be non-negative integer ids, one per image (shape ({size},)); got "
                f"{groups.dtype} {tuple(groups.shape)}."
            )
        self.groups.append(groups.detach().to("cpu", torch.int32))
        self.index.append(index.detach().to("cpu", torch.long))
        self.scores.append(scores.detach().to("cpu", torch.float64))
        self.labels.append(_check_binary(labels.detach(), "labels").to("cpu", torch.uint8))
        self.maps.append(maps.to("cpu", torch.float32))
        self.masks.append(_check_binary(masks, "masks").reshape(masks.shape).to("cpu", torch.uint8))

    def _check_duplicates(self, index: torch.Tensor, named: dict[str, torch.Tensor]) -> None:
        sorted_index, order = torch.sort(index, stable=True)
        first = torch.ones_like(sorted_index, dtype=torch.bool)
        first[1:] = sorted_index[1:] != sorted_index[:-1]
        if bool(first.all()):
            return
        positions = torch.arange(index.numel())
        group_start = torch.cummax(torch.where(first, positions, 0), dim=0).values
        repeated, kept = order[~first], order[group_start[~first]]
        for name, values in named.items():
            exact = name in ("labels", "masks")
            tolerance = 0.0 if exact else self.duplicate_tolerance * float(values.abs().max())
            differences = (values[repeated].double() - values[kept].double()).abs().reshape(repeated.numel(), -1)
            bad = differences.amax(1) > tolerance
            if bool(bad.any()):
                sample = int(index[repeated[bad][0]])
                raise ValueError(
                    f"{type(self).__name__}: sample index {sample} was evaluated twice with different {name} (largest "
                    f"difference {float(differences[bad].max()):.3g}, allowed {tolerance:.3g}). A padded duplicate "
                    "must be the same sample: check that every rank's dataset lists samples in the same order and "
                    "that the model is in eval mode (no dropout, no batch statistics)."
                )

    @override
    def compute(self) -> dict[str, torch.Tensor]:
        """The metrics of every sample counted once (see the class docstring); undefined ones are NaN."""
        owner = type(self).__name__
        empty = isinstance(self.index, list) and not self.index
        index = torch.zeros(0, dtype=torch.long) if empty else dim_zero_cat(self.index)
        if index.numel() == 0:
            raise ValueError(f"{owner}.compute: no sample was added (call update with at least one batch first).")
        named = {
            "scores": dim_zero_cat(self.scores),
            "labels": dim_zero_cat(self.labels),
            "maps": dim_zero_cat(self.maps),
            "masks": dim_zero_cat(self.masks),
            "groups": dim_zero_cat(self.groups),
        }
        index = index.long()
        self._check_duplicates(index, named)
        index, scores, labels, maps, masks, groups = unique_by_index(index, *named.values())
        del named  # the deduplicated copies are kept, the concatenated ones freed
        labels, masks = labels.bool(), masks.bool()
        ids = groups.unique().tolist()
        if len(ids) == 1:
            return self._suite(scores, labels, maps, masks)
        per_group = {}
        for group in ids:
            chosen = groups == group
            per_group[group] = self._suite(
                scores[chosen], labels[chosen], maps[chosen], masks[chosen], f"group {group}"
            )
        result = {name: torch.stack([r[name] for r in per_group.values()]).mean() for name in METRICS}
        nan = torch.tensor(math.nan, dtype=torch.float64)
        result.update(image_f1_threshold=nan, pixel_f1_threshold=nan, per_group=per_group)
        result["num_images"] = torch.tensor(float(index.numel()), dtype=torch.float64)
        return result

    def _suite(
        self, scores: torch.Tensor, labels: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor, where: str = ""
    ) -> dict[str, torch.Tensor]:
        """The metrics of one deduplicated set (or group): NaN where undefined, with one warning if asked."""
        owner = type(self).__name__
        nan = torch.tensor(math.nan, dtype=torch.float64)
        result = {name: nan for name in (*METRICS, "image_f1_threshold", "pixel_f1_threshold")}
        result["num_images"] = torch.tensor(float(labels.numel()), dtype=torch.float64)
        undefined = []
        num_anomalous = int(labels.sum())
        if 0 < num_anomalous < labels.numel():
            image_ap, best = _ap_and_f1_max(scores, labels)
            result.update(image_auroc=image_auroc(scores, labels), image_ap=image_ap)
            result.update(image_f1_max=best.value, image_f1_threshold=best.threshold)
        else:
            undefined.append(f"image_* ({num_anomalous} of {labels.numel()} images anomalous: both labels needed)")
        anomalous_pixels = int(masks.sum())
        if anomalous_pixels:
            pixel_ap, best = _ap_and_f1_max(maps.reshape(-1), masks.reshape(-1))  # one sort for both
            result.update(pixel_ap=pixel_ap, pixel_f1_max=best.value, pixel_f1_threshold=best.threshold)
        if 0 < anomalous_pixels < masks.numel():
            result["pixel_auroc"] = pixel_auroc(maps, masks, num_bins=self.pixel_auroc_bins).to(torch.float64)
            result["pixel_aupro"] = aupro(maps, masks, fpr_limit=self.fpr_limit)
        else:
            missing = "pixel_auroc, pixel_aupro" if anomalous_pixels else "pixel_*"
            undefined.append(f"{missing} ({anomalous_pixels} of {masks.numel()} pixels anomalous)")
        if undefined and self.warn_undefined:
            place = f" in {where}" if where else ""
            rank_zero_warn(f"{owner}: undefined{place}, returned as NaN: {'; '.join(undefined)}.")
        return result
