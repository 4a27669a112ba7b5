"""scikit-learn's digits split for generalized category discovery: a GCD toy that runs anywhere, offline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms import v2
from typing_extensions import override

from lightning_regs.batch import LABELED
from lightning_regs.datamodules.base import SplitDataModule, hparam
from lightning_regs.datamodules.gcd_split import (
    GCDRows,
    check_known_classes,
    draw_labeled_per_class,
    known_classes_state,
    known_first_order,
    targets_in_order,
)
from lightning_regs.datamodules.samplers import EpochShuffleSampler
from lightning_regs.datamodules.views import TwoViews
from lightning_regs.functional._checks import check_int, check_int_ids, check_number

__all__ = ["DigitsGCDDataModule", "SeededLoaderOrder"]


class _Jitter(nn.Module):
    """Shift by up to one pixel and add Gaussian noise: the digits' stand-in for crops and colour jitter."""

    def __init__(self, noise: float = 0.2) -> None:
        super().__init__()
        self.crop, self.noise = v2.RandomCrop(8, padding=1), noise

    @override
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.crop(image) + self.noise * torch.randn_like(image)


class SeededLoaderOrder(EpochShuffleSampler):
    """The order a Trainer drew from ``DataLoader(shuffle=True, drop_last=True, generator=<seeded>)``, by epoch.

    That loader draws from one generator, ``torch.Generator().manual_seed(seed)``, over the whole run: per epoch,
    its base seed and then the epoch's permutation (the Trainer stops after the epoch's last whole batch, before the
    sampler runs out). That order is replayed here from ``seed`` and the epoch alone, so it resumes like every
    :class:`~lightning_regs.datamodules.samplers.EpochShuffleSampler` and gives the batches
    :class:`DigitsGCDDataModule` served before it kept a training position (its published figures).

    Example::

        >>> sampler = SeededLoaderOrder(10, seed=0)
        >>> first = list(sampler)
        >>> sampler.set_epoch(1)
        >>> sorted(first) == sorted(sampler) == list(range(10)), first != list(sampler)
        (True, True)
    """

    @override
    def epoch_order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed)
        size = self.num_samples_total
        for _ in range(self.epoch):  # the earlier epochs' draws
            torch.empty((), dtype=torch.int64).random_(generator=generator)
            torch.randperm(size, generator=generator)
        torch.empty((), dtype=torch.int64).random_(generator=generator)  # the loader's base seed, drawn first
        return torch.randperm(size, generator=generator).tolist()


class DigitsGCDDataModule(SplitDataModule):
    """The 1,797 8×8 digits as a GCD problem: ``known_classes`` with ``labeled_fraction`` of their images labelled.

    A seeded split holds out ``test_fraction`` of the images. In the training set, ``labeled_fraction``
    of each known class's images are labelled; every other image (the rest of the known classes and
    all of the novel ones) has ``target = -1``; ``true_target`` carries every image's class, for
    evaluation only. Training images come as two jittered views, ``image`` ``(2, 1, 8, 8)``
    (:class:`~lightning_regs.datamodules.views.TwoViews`). Validation serves the *unlabelled training
    images* (the transductive protocol), test the held-out images; both unaugmented, with their class
    as ``target``. Targets put the known digits first (:mod:`~lightning_regs.datamodules.gcd_split`, as
    ``CUB200DataModule``): target ``t`` is digit ``class_order[t]``, the known digits ``0..K-1`` in the order given,
    then the novel ones ascending; with the default known digits 0-4 a target is its digit.

    On the DataModule base (:class:`~lightning_regs.datamodules.base.SplitDataModule`): the split (training,
    test and labelled positions) and seed are kept in :meth:`state_dict` with the training position and each split's
    fingerprint, so a run resumed from any step sees the batches an uninterrupted one would; a checkpoint made with
    other known digits is refused. The training order is :class:`SeededLoaderOrder` (whole batches only: the last
    partial batch of an epoch is dropped); validation and test come in batches of 256.

    Args:
        known_classes: the known ("Old") digits.
        labeled_fraction: share of each known class's training images that are labelled.
        test_fraction: share of all images held out for testing.
        batch_size: samples per batch on each process.
        seed: seed of the split, the labelled subset and the training order.

    Example::

        >>> dm = DigitsGCDDataModule(batch_size=8)
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> batch["image"].shape, sorted(batch)
        (torch.Size([8, 2, 1, 8, 8]), ['image', 'index', 'labeled', 'target', 'true_target'])
    """

    num_classes = 10
    split_arguments = ("labeled_fraction", "test_fraction")

    labeled_fraction = hparam()
    test_fraction = hparam()

    def __init__(
        self,
        known_classes: Sequence[int] = (0, 1, 2, 3, 4),
        labeled_fraction: float = 0.5,
        test_fraction: float = 0.2,
        batch_size: int = 128,
        seed: int = 0,
    ) -> None:
        super().__init__()
        owner = "DigitsGCDDataModule"
        check_number(owner, "labeled_fraction", labeled_fraction, low=0, high=1, low_open=True)
        check_number(owner, "test_fraction", test_fraction, low=0, high=1, low_open=True, high_open=True)
        known_classes = check_int_ids(owner, "known_classes (digits)", known_classes, low=0, high=9)
        check_int(owner, "batch_size", batch_size, low=1)
        check_int(owner, "seed", seed, low=0)
        # About 1797 / 10 images per digit, (1 - test_fraction) of them in training: the fewest a class has is 174.
        if round(labeled_fraction * round(174 * (1 - test_fraction))) < 1:
            raise ValueError(
                f"{owner}: labeled_fraction={labeled_fraction} labels no training image of a known digit (with "
                f"test_fraction={test_fraction} a digit has about {round(174 * (1 - test_fraction))} training images): "
                "raise labeled_fraction."
            )
        self.save_hyperparameters()
        self.known_classes = [int(c) for c in known_classes]
        #: target ``t`` is digit ``class_order[t]``: the known digits first
        self.class_order = known_first_order(self.known_classes, self.num_classes)
        self.eval_batch_size = 256

    @property
    def train_set(self) -> Dataset:
        """The training rows (two views, ``target`` -1 where unlabelled)."""
        return self._set("train")

    @property
    def val_set(self) -> Dataset:
        """The unlabelled training images, unaugmented, with their class."""
        return self._set("val")

    @property
    def test_set(self) -> Dataset:
        """The held-out images, unaugmented, with their class."""
        return self._set("test")

    def _set(self, split: str) -> Dataset:
        if not self.datasets:
            self.setup()
        return self.datasets[split]

    def draw_split(self, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training and test positions (in the seeded order, not sorted) and the labelled training positions."""
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(targets), generator=generator)
        n_test = round(self.test_fraction * len(targets))
        test, train = order[:n_test], order[n_test:]

        def refuse(digit: int, images: int) -> None:
            raise ValueError(
                f"DigitsGCDDataModule: labeled_fraction={self.labeled_fraction} labels none of the {images} "
                f"training images of known digit {digit}: raise labeled_fraction."
            )

        labeled = draw_labeled_per_class(targets[train], self.known_classes, self.labeled_fraction, generator, refuse)
        return {"train": train, "test": test, LABELED: labeled.nonzero().flatten()}

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        from sklearn.datasets import load_digits

        data = load_digits()
        images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16
        digits = torch.tensor(data.target, dtype=torch.long)
        if not self.split_indices:
            self.split_indices = self.draw_split(digits)
        train, test = self.split_indices["train"], self.split_indices["test"]
        targets = targets_in_order(digits, self.class_order)
        mean, std = images[train].mean(), images[train].std()
        images = (images - mean) / std
        labeled = torch.zeros(len(train), dtype=torch.bool)
        labeled[self.split_indices[LABELED]] = True
        unlabeled = train[~labeled]
        self.datasets = {
            "train": GCDRows(images[train], targets[train], labeled, TwoViews(_Jitter()), hide=True),
            "val": GCDRows(images[unlabeled], targets[unlabeled]),
            "test": GCDRows(images[test], targets[test]),
        }

    @override
    def train_sampler(self, dataset: Dataset) -> SeededLoaderOrder:
        return SeededLoaderOrder(len(dataset), self.seed)  # type: ignore[arg-type]

    @override
    def train_loader_options(self) -> dict[str, Any]:
        # drop_last as before; the loader's own generator keeps its base-seed draws off the global RNG, as before
        return {"drop_last": True, "generator": torch.Generator().manual_seed(self.seed)}

    @override
    def extra_state(self) -> dict[str, Any]:
        return known_classes_state(self.known_classes)

    @override
    def load_extra_state(self, state_dict: Mapping[str, Any]) -> None:
        check_known_classes(state_dict, self.known_classes, "Use the same known_classes.")
