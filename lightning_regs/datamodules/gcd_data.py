"""Your own images and labels as generalized category discovery rows: what ``tasks.GCDClassifier`` trains on."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from lightning_regs.datamodules.gcd_split import GCDRows, draw_labeled_per_class
from lightning_regs.datamodules.indexed import indexed_sample
from lightning_regs.datamodules.views import TwoViews
from lightning_regs.functional._checks import check_int_ids, check_number

__all__ = ["GCDDataset"]


class GCDDataset(GCDRows):
    """Your own ``(images, targets)`` as GCD rows: some images of the known classes labelled, every other one not.

    Of each known class, a seeded ``labeled_fraction`` of its images is labelled; the rest of the known classes
    and every image of the other ("novel") classes are unlabelled (``target = -1``). Each row is a dict of the
    batch contract: ``image`` holds two augmented views ``(2, *image shape)``
    (:class:`~lightning_regs.datamodules.views.TwoViews` of ``augment``), ``target`` the class id or ``-1``,
    ``labeled``, ``true_target`` (the real class, for evaluation only) and ``index``. :meth:`evaluation_set`
    serves the unlabelled images, unaugmented with their class as ``target``: the transductive validation set
    the GCD papers report. The split is :mod:`~lightning_regs.datamodules.gcd_split`'s, with your class ids kept
    as they are (give :class:`~lightning_regs.tasks.GCDClassifier` the same ``known_classes``). Wrap both in a
    ``DataLoader``, or hand them to :class:`~lightning_regs.datamodules.DatasetDataModule` for exact resume.

    Args:
        images: ``(N, ...)`` the images (or any per-sample inputs the backbone takes).
        targets: ``(N,)`` every image's class id; ``-1`` where the class is unknown (such rows are never labelled
            and are left out of the evaluation set).
        known_classes: the known ("Old") classes' ids; every other id in ``targets`` is a novel ("New") class.
        labeled_fraction: the share of each known class's images that is labelled (0.5 in the GCD benchmarks).
        augment: one random augmentation of one image (crops, flips, jitter, noise); each row holds two draws of it.
            ``None``: two copies of the image, which teach SimGCD's two-view terms nothing.
        seed: seed of the draw of the labelled images.

    Example::

        >>> x, y = torch.randn(40, 1, 8, 8), torch.arange(40) % 4  # classes 0, 1 known; 2, 3 novel
        >>> train = GCDDataset(x, y, known_classes=[0, 1], augment=lambda image: image + 0.1 * torch.randn_like(image))
        >>> row = train[0]
        >>> row["image"].shape, sorted(row), int(train.labeled.sum()), train.novel_classes
        (torch.Size([2, 1, 8, 8]), ['image', 'index', 'labeled', 'target', 'true_target'], 10, [2, 3])
        >>> len(train.evaluation_set()), train.evaluation_set()[0]["image"].shape  # the 30 unlabelled images
        (30, torch.Size([1, 8, 8]))
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        known_classes: Sequence[int],
        labeled_fraction: float = 0.5,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        targets = torch.as_tensor(targets)
        if targets.dim() != 1 or targets.is_floating_point() or len(targets) != len(images):
            raise ValueError(
                f"GCDDataset needs one int class id per image: targets of shape ({len(images)},), got dtype "
                f"{targets.dtype} and shape {tuple(targets.shape)} (use -1 for images whose class is unknown)."
            )
        check_number("GCDDataset", "labeled_fraction", labeled_fraction, low=0, high=1, low_open=True)
        self.known_classes = check_int_ids("GCDDataset", "known_classes", known_classes, low=0)
        present = set(targets[targets >= 0].tolist())
        missing = sorted(set(self.known_classes) - present)
        if not self.known_classes or missing:
            raise ValueError(
                f"known_classes must name classes present in targets (their images are the labelled ones); got "
                f"{list(known_classes)}, of which {missing} have no image. The classes present: {sorted(present)}."
            )
        self.novel_classes = sorted(present - set(self.known_classes))
        generator = torch.Generator().manual_seed(seed)
        labeled = draw_labeled_per_class(targets.long(), self.known_classes, labeled_fraction, generator)
        # the training targets (-1 on unlabelled rows) are `targets`: DatasetDataModule's fingerprint reads them
        super().__init__(images, targets, labeled, TwoViews(augment if augment is not None else _identity), hide=True)
        self.true_targets = self.truth
        self.views = self.transform
        empty = [c for c in self.known_classes if not bool(self.labeled[self.true_targets == c].any())]
        if empty:
            raise ValueError(
                f"GCDDataset: labeled_fraction={labeled_fraction} labels no image of known classes {empty} (the share "
                f"of their images rounds to 0): raise labeled_fraction so that every known class has a labelled image."
            )

    def evaluation_set(self) -> Dataset:
        """The unlabelled images whose class is known, unaugmented, ``target`` their class: what GCD scores."""
        rows = ((~self.labeled) & (self.true_targets >= 0)).nonzero().flatten()
        return _EvaluationRows(self.images[rows], self.true_targets[rows])


def _identity(image: torch.Tensor) -> torch.Tensor:
    return image


class _EvaluationRows(Dataset):
    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return indexed_sample(self.images[index], self.targets[index], index)
