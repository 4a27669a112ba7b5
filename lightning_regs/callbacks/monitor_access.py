"""What a monitor's measurement reads: the measured module, the point sets' data, private generators, this rank's
shard and the sum over ranks (:class:`MonitorAccess`)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import Dataset

from lightning_regs._compat import COMPILED_WRAPPER_ATTRIBUTE
from lightning_regs.callbacks.monitor_points import draw_from_dataset, trainer_loaders
from lightning_regs.modes import unwrap_compiled

__all__ = ["MonitorAccess"]


class MonitorAccess:
    """Mixin of :class:`~lightning_regs.callbacks.ScheduledMonitor`: the helpers a subclass's ``prepare`` and
    ``measure`` call."""

    # Set by ScheduledMonitor.__init__.
    submodule: str | None
    points_per_set: int | None
    seed: int

    def model(self, pl_module: pl.LightningModule) -> torch.nn.Module:
        """The module measured: ``pl_module`` or its ``submodule``, unwrapped if compiled."""
        if not self.submodule:
            return unwrap_compiled(pl_module)
        path = ".".join(
            part for part in self.submodule.split(".") if part != COMPILED_WRAPPER_ATTRIBUTE
        )  # a path through the wrapper
        try:
            return unwrap_compiled(pl_module.get_submodule(path))
        except AttributeError:
            names = [name for name, _ in pl_module.named_children()]
            raise ValueError(
                f"{type(self).__name__}(submodule={self.submodule!r}): {type(pl_module).__name__} has no such "
                f"submodule; its children are {names}."
            ) from None

    def dataset(self, trainer: pl.Trainer, split: str) -> Dataset:
        """The data set of ``split``: the DataModule's, else the one of the loaders given to ``fit``.

        From a lightning_regs DataModule the training split comes with the evaluation transform
        (``evaluation_dataset``): clean images, not augmented views. Loaders given to ``fit`` are used
        as they are; give clean points with ``set_points`` when their data set augments.
        """
        datamodule = trainer.datamodule
        if datamodule is not None:
            if hasattr(datamodule, "evaluation_dataset"):  # training points without augmentation
                return datamodule.evaluation_dataset(split)
            return getattr(datamodule, f"{split}_dataloader")().dataset
        loaders = trainer_loaders(trainer, split)
        if not loaders:
            raise RuntimeError(
                f"{type(self).__name__} draws its {split!r} points from the Trainer's data, and this run has no "
                f"{split} data: pass {split}_dataloaders to fit (or a DataModule), choose another heldout_split, "
                "or give the points with set_points(...) before fit."
            )
        return loaders[0].dataset

    def draw_points(self, trainer: pl.Trainer, split: str, offset: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """:attr:`points_per_set` images and targets from ``split``, drawn from the private generator."""
        return draw_from_dataset(self.dataset(trainer, split), self.points_per_set, self.generator(offset))

    def generator(self, offset: int = 0) -> torch.Generator:
        """A generator seeded by ``seed`` and ``offset``: draws that never touch the global RNG."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + offset)

    @staticmethod
    def shard(trainer: pl.Trainer, tensor: torch.Tensor) -> torch.Tensor:
        """Rank ``r``'s share of a point set: items ``r, r + W, ...``."""
        return tensor[trainer.global_rank :: trainer.world_size]

    @staticmethod
    def even_shard(trainer: pl.Trainer, tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Rank ``r``'s share (items ``r, r + W, ...``) padded to ``ceil(N / W)`` rows, and how many rows are real.

        The padding repeats the set's first item after the real rows; give it weight 0 in the sums. Every
        rank then runs the same number of forwards in the same chunks, which FSDP2 needs: its forwards
        gather the parameters, a collective all ranks must join. On one process nothing is padded.

        Example::

            >>> from types import SimpleNamespace
            >>> from lightning_regs.callbacks import ScheduledMonitor
            >>> rank1 = SimpleNamespace(global_rank=1, world_size=2)
            >>> shard, real = ScheduledMonitor.even_shard(rank1, torch.arange(5))
            >>> shard.tolist(), real
            ([1, 3, 0], 2)
        """
        shard = tensor[trainer.global_rank :: trainer.world_size]
        real = shard.shape[0]
        rows = -(-tensor.shape[0] // trainer.world_size)
        if real < rows:
            shard = torch.cat([shard, tensor[:1].expand(rows - real, *tensor.shape[1:])])
        return shard, real

    @staticmethod
    def reduce_sum(trainer: pl.Trainer, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over the ranks (itself on one process)."""
        if trainer.world_size == 1:
            return tensor
        return trainer.strategy.reduce(tensor.clone(), reduce_op="sum")
