"""scikit-learn's digits split for generalized category discovery: a GCD toy that runs anywhere, offline."""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from lightning_regs.batch import IMAGE, INDEX, LABELED, TARGET, TRUE_TARGET
from lightning_regs.datamodules.views import TwoViews
from lightning_regs.functional._checks import check_int, check_int_ids, check_number

__all__ = ["DigitsGCDDataModule"]


class _Jitter(nn.Module):
    """Shift by up to one pixel and add Gaussian noise: the digits' stand-in for crops and colour jitter."""

    def __init__(self, noise: float = 0.2) -> None:
        super().__init__()
        self.crop, self.noise = v2.RandomCrop(8, padding=1), noise

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.crop(image) + self.noise * torch.randn_like(image)


class _GCDRows(Dataset):
    def __init__(
        self, images: torch.Tensor, truth: torch.Tensor, labeled: torch.Tensor, transform: nn.Module | None
    ) -> None:
        self.images, self.truth, self.labeled, self.transform = images, truth, labeled, transform

    def __len__(self) -> int:
        return len(self.truth)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = self.images[index]
        return {
            IMAGE: self.transform(image) if self.transform is not None else image,
            TARGET: self.truth[index] if self.labeled[index] or self.transform is None else torch.tensor(-1),
            INDEX: torch.tensor(index),
            LABELED: self.labeled[index],
            TRUE_TARGET: self.truth[index],
        }


class DigitsGCDDataModule(pl.LightningDataModule):
    """The 1,797 8×8 digits as a GCD problem: ``known_classes`` with ``labeled_fraction`` of their images labelled.

    A seeded split holds out ``test_fraction`` of the images. In the training set, ``labeled_fraction``
    of each known class's images are labelled; every other image (the rest of the known classes and
    all of the novel ones) has ``target = -1``; ``true_target`` carries every image's class, for
    evaluation only. Training images come as two jittered views, ``image`` ``(2, 1, 8, 8)``
    (:class:`~lightning_regs.datamodules.views.TwoViews`). Validation serves the *unlabelled training
    images* (the transductive protocol), test the held-out images; both unaugmented, with their class
    as ``target``. Class ids are the digits themselves, so the known classes need not come first.

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

    def setup(self, stage: str | None = None) -> None:
        from sklearn.datasets import load_digits

        hp = self.hparams
        data = load_digits()
        images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16
        targets = torch.tensor(data.target, dtype=torch.long)
        generator = torch.Generator().manual_seed(hp.seed)
        order = torch.randperm(len(targets), generator=generator)
        n_test = round(hp.test_fraction * len(targets))
        test, train = order[:n_test], order[n_test:]
        mean, std = images[train].mean(), images[train].std()
        images = (images - mean) / std
        labeled = torch.zeros(len(train), dtype=torch.bool)
        for c in self.known_classes:
            rows = (targets[train] == c).nonzero().flatten()
            chosen = rows[torch.randperm(len(rows), generator=generator)[: round(hp.labeled_fraction * len(rows))]]
            if not len(chosen):
                raise ValueError(
                    f"DigitsGCDDataModule: labeled_fraction={hp.labeled_fraction} labels none of the {len(rows)} "
                    f"training images of known digit {c}: raise labeled_fraction."
                )
            labeled[chosen] = True
        self.train_set = _GCDRows(images[train], targets[train], labeled, TwoViews(_Jitter()))
        unlabeled = train[~labeled]
        self.val_set = _GCDRows(
            images[unlabeled], targets[unlabeled], torch.zeros(len(unlabeled), dtype=torch.bool), None
        )
        self.test_set = _GCDRows(images[test], targets[test], torch.zeros(len(test), dtype=torch.bool), None)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(
            self.train_set, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True, generator=generator
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)
