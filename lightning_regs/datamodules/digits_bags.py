"""Bags of scikit-learn's digits for multiple-instance learning: the MNIST-bags set-up, offline and in seconds."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch.utils.data import Dataset
from typing_extensions import override

from lightning_regs.batch import INSTANCE_TARGET
from lightning_regs.datamodules.bags import collate_bags
from lightning_regs.datamodules.base import SplitDataModule, hparam
from lightning_regs.datamodules.digits import DigitsDataModule
from lightning_regs.datamodules.indexed import indexed_sample

__all__ = ["DigitsBags", "DigitsBagsDataModule"]

_SPLITS = ("train", "val", "test")


class DigitsBags(Dataset):
    """Bags of digit images: bag ``i`` holds the images ``members[offsets[i]:offsets[i + 1]]``.

    Each sample is a dict with ``image`` (``(N, 64)`` features or ``(N, 1, 8, 8)`` images), ``target`` (the bag's
    label), ``index`` (the bag's position) and ``instance_target`` (``(N,)``, 1 where the instance is the positive
    digit). ``paths`` names each bag by the scikit-learn rows of its instances, so the checkpoint's data fingerprint
    (:func:`~lightning_regs.datamodules.fingerprint.data_fingerprint`) covers which images make each bag, not only
    the bag labels (``targets``).

    Args:
        images: ``(M, 1, 8, 8)`` the split's normalized digit images.
        digits: ``(M,)`` each image's digit.
        rows: ``(M,)`` each image's row in ``sklearn.datasets.load_digits()``.
        members: the bags' instances, concatenated (positions in ``images``).
        offsets: ``(num_bags + 1,)`` where each bag starts in ``members``.
        positive_digit: the digit that makes a bag positive.
        flatten: serve each instance as 64 features instead of a ``(1, 8, 8)`` image.
    """

    #: The data fingerprint's content digest reads the bags themselves (``paths`` names them; it lists no file).
    content_from = "items"

    def __init__(
        self,
        images: torch.Tensor,
        digits: torch.Tensor,
        rows: torch.Tensor,
        members: torch.Tensor,
        offsets: torch.Tensor,
        positive_digit: int,
        flatten: bool,
    ) -> None:
        self.images = images.flatten(1) if flatten else images
        self.instance_targets = (digits == positive_digit).long()
        self.members, self.offsets = members, offsets
        self.sizes = offsets.diff()
        positives = torch.zeros(len(self.sizes), dtype=torch.long).index_add_(
            0, torch.repeat_interleave(torch.arange(len(self.sizes)), self.sizes), self.instance_targets[members]
        )
        #: each bag's label: 1 iff it holds the positive digit
        self.targets = (positives > 0).long()
        self.paths = [
            "digits/" + "+".join(str(int(rows[m])) for m in members[start:end])
            for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
        ]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        bag = self.members[self.offsets[index] : self.offsets[index + 1]]
        instances = {INSTANCE_TARGET: self.instance_targets[bag]}
        return indexed_sample(self.images[bag], self.targets[index], index, instances)


class DigitsBagsDataModule(SplitDataModule):
    """Multiple-instance learning on scikit-learn's 8×8 digits: a bag is positive iff it holds a ``positive_digit``.

    The MNIST-bags set-up of Ilse et al. (2018), "Attention-based deep multiple instance learning", on the 1,797
    digits bundled with scikit-learn (no download). The images are split first, as
    :class:`~lightning_regs.datamodules.DigitsDataModule` splits them with the same ``seed`` and fractions (and
    normalized with its training-split statistics); then each split's bags are drawn from its own images only, so
    no image is in two splits. Per split, from ``seed`` alone:

    * each bag's size ``N`` is a normal draw of mean ``mean_bag_size`` and deviation ``std_bag_size``, rounded and
      clipped to ``[min_bag_size, max_bag_size]``, the same for positive and negative bags;
    * ``round(positive_fraction * num_bags)`` bags, at random positions, are positive: they hold ``k`` images of
      ``positive_digit``, ``k`` uniform in ``1..max(1, N // 5)``, and ``N - k`` other digits; negative bags hold
      ``N`` other digits. The images of one bag are distinct and in random order; bags may share images.

    Samples are dicts with ``image`` (``(N, 64)`` for ``instances="features"``, ``(N, 1, 8, 8)`` for ``"images"``),
    ``target`` (int64, the bag's label), ``index`` and ``instance_target`` (int64 ``(N,)``: 1 where the instance is
    the positive digit; for evaluation only, e.g. the instance-level AUROC of an attention). Batches come from
    :func:`~lightning_regs.datamodules.bags.collate_bags`: padded to the longest bag, with ``instance_mask``.
    Resume, DDP sharding and the data fingerprint are the base's
    (:class:`~lightning_regs.datamodules.base.SplitDataModule`): the state holds the image split and every argument
    that shapes the bags, so a resumed run rebuilds the same bags and continues with the next batch.

    Args:
        positive_digit: the digit (0..9) whose presence makes a bag positive.
        mean_bag_size: mean number of instances in a bag.
        std_bag_size: standard deviation of the bag size (0: every bag has ``mean_bag_size`` instances).
        min_bag_size: fewest instances in a bag.
        max_bag_size: most instances in a bag.
        num_train_bags: bags in the training split.
        num_val_bags: bags in the validation split.
        num_test_bags: bags in the test split (``predict`` uses it too).
        positive_fraction: share of each split's bags that are positive, in (0, 1).
        instances: ``"features"`` (each instance 64 floats) or ``"images"`` (each ``(1, 8, 8)``).
        val_fraction: share of the digit images the validation bags are drawn from.
        test_fraction: share of the digit images the test bags are drawn from.
        batch_size: bags per batch on each process (1 is the papers' setting).
        seed: seed of the image split, the bags and the training order.
        num_workers: DataLoader workers (0 is fastest for this in-memory data).

    Example::

        >>> dm = DigitsBagsDataModule(batch_size=4)
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> sorted(batch)
        ['image', 'index', 'instance_mask', 'instance_target', 'target']
        >>> batch["image"].shape[2], batch["instance_mask"].shape == batch["image"].shape[:2], dm.num_classes
        (64, True, 2)
        >>> pooled = (batch["image"] * batch["instance_mask"][..., None]).sum(1) / batch["instance_mask"].sum(1, True)
        >>> pooled.shape, len(dm.datasets["train"]), int(dm.datasets["train"].targets.sum())
        (torch.Size([4, 64]), 200, 100)
    """

    num_classes: int = 2
    class_names: tuple[str, ...] = ("negative", "positive")

    @staticmethod
    @override
    def collate_fn(bags: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """:func:`~lightning_regs.datamodules.bags.collate_bags`: bags differ in length: padded, with instance_mask."""
        return collate_bags(bags)

    split_arguments = (
        "val_fraction",
        "test_fraction",
        "mean_bag_size",
        "std_bag_size",
        "min_bag_size",
        "max_bag_size",
        "num_train_bags",
        "num_val_bags",
        "num_test_bags",
        "positive_fraction",
    )
    task_arguments = ("positive_digit",)

    positive_digit = hparam()
    mean_bag_size = hparam()
    std_bag_size = hparam()
    min_bag_size = hparam()
    max_bag_size = hparam()
    num_train_bags = hparam()
    num_val_bags = hparam()
    num_test_bags = hparam()
    positive_fraction = hparam()
    instances = hparam()
    val_fraction = hparam()
    test_fraction = hparam()

    def __init__(
        self,
        positive_digit: int = 9,
        mean_bag_size: float = 10,
        std_bag_size: float = 2,
        min_bag_size: int = 2,
        max_bag_size: int = 30,
        num_train_bags: int = 200,
        num_val_bags: int = 100,
        num_test_bags: int = 100,
        positive_fraction: float = 0.5,
        instances: Literal["features", "images"] = "features",
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        batch_size: int = 1,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if positive_digit not in range(10):
            raise ValueError(f"positive_digit must be a digit 0..9, got {positive_digit!r}.")
        if min_bag_size < 1 or max_bag_size < min_bag_size:
            raise ValueError(
                f"Bag sizes need 1 <= min_bag_size <= max_bag_size, got min_bag_size={min_bag_size} and "
                f"max_bag_size={max_bag_size}."
            )
        if not min_bag_size <= mean_bag_size <= max_bag_size or std_bag_size < 0:
            raise ValueError(
                f"mean_bag_size={mean_bag_size} must lie in [min_bag_size, max_bag_size] = [{min_bag_size}, "
                f"{max_bag_size}] and std_bag_size={std_bag_size} must be 0 or more."
            )
        if not 0 < positive_fraction < 1:
            raise ValueError(
                f"positive_fraction is the share of positive bags and must lie in (0, 1), got {positive_fraction}: "
                "a split of one class teaches nothing and has no AUROC."
            )
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction} must lie in (0, 1) and leave digit "
                "images for the training bags (their sum below 1)."
            )
        if instances not in ("features", "images"):
            raise ValueError(f"instances must be 'features' (N, 64) or 'images' (N, 1, 8, 8), got {instances!r}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        for split, count in zip(_SPLITS, (num_train_bags, num_val_bags, num_test_bags), strict=True):
            _check_bag_count(split, count, positive_fraction)
        self.save_hyperparameters()
        self.mean: tuple[float, ...] | None = None  # of the training images' pixels, set by setup
        self.std: tuple[float, ...] | None = None

    @property
    def instance_shape(self) -> tuple[int, ...]:
        """The shape of one instance: ``(64,)`` for features, ``(1, 8, 8)`` for images."""
        return (64,) if self.instances == "features" else (1, 8, 8)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        # DigitsDataModule owns loading, splitting and normalizing the digits; the bags are drawn from its splits.
        digits = DigitsDataModule(val_fraction=self.val_fraction, test_fraction=self.test_fraction, seed=self.seed)
        digits.split_indices = dict(self.split_indices)
        digits.setup()
        self.split_indices = digits.split_indices
        self.mean, self.std = digits.mean, digits.std
        datasets = {}
        for number, split in enumerate(_SPLITS):
            images, labels = digits.datasets[split].images, digits.datasets[split].targets
            members, offsets = self._draw_bags(split, labels, torch.Generator().manual_seed(self.seed * 3 + number))
            datasets[split] = DigitsBags(
                images,
                labels,
                self.split_indices[split],
                members,
                offsets,
                self.positive_digit,
                flatten=self.instances == "features",
            )
        self.datasets = datasets

    def _draw_bags(
        self, split: str, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(members, offsets)`` of ``split``'s bags over its images of digits ``labels`` (the class's scheme)."""
        num_bags = getattr(self, f"num_{split}_bags")
        positives = (labels == self.positive_digit).nonzero().flatten()
        negatives = (labels != self.positive_digit).nonzero().flatten()
        sizes = torch.normal(float(self.mean_bag_size), float(self.std_bag_size), (num_bags,), generator=generator)
        sizes = sizes.round().long().clamp(self.min_bag_size, self.max_bag_size)
        bag_labels = torch.zeros(num_bags, dtype=torch.long)
        bag_labels[torch.randperm(num_bags, generator=generator)[: round(self.positive_fraction * num_bags)]] = 1
        most_positives = int((sizes[bag_labels == 1] // 5).clamp(min=1).max())
        largest = int(sizes.max())
        if len(positives) < most_positives or len(negatives) < largest:
            raise ValueError(
                f"{type(self).__name__}: the {split} split's digit images ({len(positives)} of digit "
                f"{self.positive_digit}, {len(negatives)} others) are too few for its bags (up to {most_positives} "
                f"positive and {largest} other distinct images in a bag). Raise {_fraction_of(split)} or lower "
                "max_bag_size."
            )
        bags = []
        for size, label in zip(sizes.tolist(), bag_labels.tolist(), strict=True):
            k = int(torch.randint(1, max(1, size // 5) + 1, (1,), generator=generator)) if label else 0
            chosen = torch.cat(
                [
                    positives[torch.randperm(len(positives), generator=generator)[:k]],
                    negatives[torch.randperm(len(negatives), generator=generator)[: size - k]],
                ]
            )
            bags.append(chosen[torch.randperm(size, generator=generator)])
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        return torch.cat(bags), offsets


def _fraction_of(split: str) -> str:
    return {"train": "the training share (lower val_fraction + test_fraction)"}.get(split, f"{split}_fraction")


def _check_bag_count(split: str, count: int, positive_fraction: float) -> None:
    """Refuse a split of no bags, or of bags of one class only, naming the split and what to change."""
    if count < 1:
        raise ValueError(f"num_{split}_bags must be at least 1, got {count}.")
    num_positive = round(positive_fraction * count)
    if 0 < num_positive < count:
        return
    rarer = min(positive_fraction, 1 - positive_fraction)  # the class that rounds to no bag
    enough = next(n for n in range(max(2, int(0.5 / rarer) - 2), 10**9) if 0 < round(positive_fraction * n) < n)
    kind = "negative" if num_positive == 0 else "positive"
    closer = "" if positive_fraction == 0.5 else ", or bring positive_fraction closer to 0.5"
    raise ValueError(
        f"The {split} split would hold {count} bag(s), all {kind} (round(positive_fraction * num_{split}_bags) = "
        f"{num_positive} positive): raise num_{split}_bags to at least {enough} (with positive_fraction="
        f"{positive_fraction}){closer}."
    )
