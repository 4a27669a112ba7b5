"""The shared part of the representation monitors: labelled point sets, drawn once, and an epoch schedule by default."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_regs.callbacks.scheduled_monitor import ScheduledMonitor, check_sets

__all__ = ["LabelledPointsMonitor"]

SETS = ("train", "heldout")
_OFFSETS = {"train": 1, "heldout": 3}  # generator offsets of the draws (as the other monitors use)


class LabelledPointsMonitor(ScheduledMonitor):
    """A :class:`ScheduledMonitor` over labelled point sets: ``train`` (clean training images) and ``heldout``.

    Each set is ``num_points`` images with their int64 class ids, drawn once (``train`` from the training
    split with the evaluation transform, ``heldout`` from ``heldout_split``) or given with :meth:`set_points`,
    and kept in the checkpoint. Without a schedule argument the monitor measures on the log-spaced
    schedule planned from the budget, as every monitor does (``every_n_epochs=1``: the papers' every epoch).
    """

    def __init__(self, sets: Sequence[str] = SETS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sets = check_sets(type(self).__name__, sets, SETS)

    def set_points(
        self,
        train: tuple[torch.Tensor, torch.Tensor] | None = None,
        heldout: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Measure these ``(images, class ids)`` instead of points drawn from the data."""
        for name, pair in (("train", train), ("heldout", heldout)):
            if pair is None:
                continue
            images, targets = pair
            if targets.dim() != 1 or targets.is_floating_point() or targets.shape[0] != images.shape[0]:
                raise ValueError(
                    f"The {name} targets must be int64 class ids, one per image (shape ({images.shape[0]},)); got "
                    f"{targets.dtype} of shape {tuple(targets.shape)}."
                )
            self.points[name] = images.detach().float().cpu()
            self.points[f"{name}_targets"] = targets.detach().long().cpu()

    def labelled_points(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and class ids of set ``name``."""
        return self.points[name], self.points[f"{name}_targets"]

    @override
    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for name in self.sets:
            if name not in self.points:
                split = "train" if name == "train" else self.heldout_split
                self.set_points(**{name: self.draw_points(trainer, split, offset=_OFFSETS[name])})

    @override
    def cost_per_point(self) -> float:
        return float(len(self.sets))  # one eval forward per point and set
