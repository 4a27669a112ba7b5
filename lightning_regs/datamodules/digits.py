"""scikit-learn's bundled digits as a LightningDataModule: the data set that runs anywhere, offline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from typing_extensions import override

from lightning_regs.datamodules.base import SplitDataModule, hparam
from lightning_regs.datamodules.batch import TensorDictDataset

__all__ = ["DigitsDataModule", "fraction_split"]


def fraction_split(num_samples: int, seed: int, val_fraction: float, test_fraction: float) -> dict[str, torch.Tensor]:
    """A seeded split of ``range(num_samples)``: ``val_fraction`` and ``test_fraction`` of it held out, sorted indices.

    Example::

        >>> split = fraction_split(10, seed=0, val_fraction=0.2, test_fraction=0.3)
        >>> {name: len(indices) for name, indices in split.items()}
        {'val': 2, 'test': 3, 'train': 5}
    """
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    num_val = round(num_samples * val_fraction)
    num_test = round(num_samples * test_fraction)
    return {
        "val": order[:num_val].sort().values,
        "test": order[num_val : num_val + num_test].sort().values,
        "train": order[num_val + num_test :].sort().values,
    }


class DigitsDataModule(SplitDataModule):
    """The 1,797 real 8×8 handwritten digits bundled with scikit-learn, in 10 classes.

    No download: the data ships inside scikit-learn. A seeded random split into train, validation
    and test is drawn once and kept in :meth:`state_dict`; a resumed run adopts the checkpoint's split
    and seed (with a warning if they differ from this module's, see
    :class:`~lightning_regs.datamodules.base.SplitDataModule`), so it sees the same data.
    Pixels (0..16) are scaled to [0, 1], optionally resized (bilinear) and repeated to ``channels``,
    then normalized with the training split's mean and standard deviation (per channel in :attr:`mean` and
    :attr:`std` after ``setup``: the values InfoPro's official reconstruction target needs). ``predict`` uses the
    test split. Batches are dicts with ``image``, ``target`` and ``index`` (the position in the
    stage's split). The training order is a function of ``seed`` and the epoch
    (:class:`~lightning_regs.datamodules.samplers.EpochShuffleSampler`), so a resumed run sees the
    batches an uninterrupted one would.

    Args:
        batch_size: samples per batch on each process.
        val_fraction: share of the samples held out for validation.
        test_fraction: share of the samples held out for testing.
        seed: seed of the split; the split does not depend on the global RNG.
        image_size: resize the 8×8 images to this side (e.g. 32 so CIFAR models run); ``None`` keeps 8.
        channels: 1, or 3 to feed models built for RGB input.
        num_workers: DataLoader workers (0 is fastest for this in-memory data).
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: DataLoader ``persistent_workers`` (only with ``num_workers > 0``).

    Example::

        >>> dm = DigitsDataModule(batch_size=4, image_size=32, channels=3)
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> batch["image"].shape, batch["target"].dtype, dm.num_classes
        (torch.Size([4, 3, 32, 32]), torch.int64, 10)
    """

    num_classes: int = 10
    class_names: tuple[str, ...] = tuple(str(digit) for digit in range(10))
    split_arguments = ("val_fraction", "test_fraction")

    val_fraction = hparam()
    test_fraction = hparam()
    image_size = hparam()
    channels = hparam()

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        image_size: int | None = None,
        channels: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__()
        if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction} must lie in (0, 1) and [0, 1) "
                "and leave samples to train on (their sum below 1)."
            )
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}.")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be a positive side length or None, got {image_size}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.save_hyperparameters()
        self.mean: tuple[float, ...] | None = None  # per channel, set by setup
        self.std: tuple[float, ...] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images this module yields."""
        side = self.image_size or 8
        return (self.channels, side, side)

    def draw_split(self, num_samples: int) -> dict[str, torch.Tensor]:
        """The seeded split of ``range(num_samples)`` into train, validation and test indices."""
        return fraction_split(num_samples, self.seed, self.val_fraction, self.test_fraction)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        targets = torch.as_tensor(digits.target, dtype=torch.long)
        if not self.split_indices:
            self.split_indices = self.draw_split(len(targets))
        if self.image_size is not None and self.image_size != 8:
            images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        images = images.expand(-1, self.channels, -1, -1).contiguous()
        train_images = images[self.split_indices["train"]]
        mean, std = train_images.mean(), train_images.std()
        images = (images - mean) / std
        self.mean = (float(mean),) * self.channels
        self.std = (float(std),) * self.channels
        self.datasets = {
            split: TensorDictDataset(images[indices], targets[indices]) for split, indices in self.split_indices.items()
        }
