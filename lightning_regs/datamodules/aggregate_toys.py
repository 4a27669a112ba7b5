"""Toy data for learning from aggregate responses: a linear regression in random bags, and digits in label proportions.

Training rows are instances; each carries its bag's id (``bag_id``) and, as ``target``, its bag's aggregate response
(a mean, or class proportions), never its own label. Validation and test rows are single instances with their own
label in ``target``: they measure the instance-level predictions the aggregate training aims at. Training batches
hold whole bags (:class:`~lightning_regs.datamodules.bag_sampler.BagBatchSampler`).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from typing_extensions import override

from lightning_regs.batch import BAG_ID
from lightning_regs.datamodules.bag_sampler import BagBatchSampler, bag_dataloader
from lightning_regs.datamodules.base import ResumableDataLoader, SplitDataModule, hparam
from lightning_regs.datamodules.digits import fraction_split
from lightning_regs.datamodules.indexed import indexed_sample

__all__ = ["AggregateDataset", "AggregateRegressionDataModule", "LabelProportionsDataModule", "random_bags"]


class AggregateDataset(Dataset):
    """In-memory instance rows as dict samples: ``image`` (features), ``target``, ``index`` and, in bags, ``bag_id``.

    Args:
        features: ``(N, D)`` float features.
        targets: ``(N,)`` or ``(N, C)``: each row's bag response (with ``bag_ids``), or its own label (without).
        bag_ids: ``(N,)`` int64 bag of each row, or ``None`` for single instances (evaluation sets).
        labels: int64 ``(N,)`` the data set is identified by in checkpoints (its fingerprint's label digest); by
            default ``bag_ids``, or ``targets`` when they are class ids. Never part of the batches.

    Example::

        >>> data = AggregateDataset(torch.zeros(4, 3), torch.tensor([0.5, 0.5, 2.0, 2.0]), torch.tensor([0, 0, 1, 1]))
        >>> sample = data[2]
        >>> sorted(sample), float(sample["target"]), int(sample["bag_id"])
        (['bag_id', 'image', 'index', 'target'], 2.0, 1)
    """

    def __init__(
        self,
        features: torch.Tensor,
        targets: torch.Tensor,
        bag_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> None:
        if len(features) != len(targets) or (bag_ids is not None and len(bag_ids) != len(features)):
            lengths = [len(features), len(targets), *([len(bag_ids)] if bag_ids is not None else [])]
            raise ValueError(f"AggregateDataset: features, targets and bag_ids differ in length ({lengths}).")
        self.features = features
        self.responses = targets
        self.bag_ids = None if bag_ids is None else bag_ids.long()
        if labels is None:
            labels = self.bag_ids if self.bag_ids is not None or targets.is_floating_point() else targets
        self.labels = labels

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        extra = {BAG_ID: self.bag_ids[index]} if self.bag_ids is not None else None
        return indexed_sample(self.features[index], self.responses[index], index, extra)


def random_bags(num_rows: int, bag_size: int, generator: torch.Generator) -> torch.Tensor:
    """``(num_rows,)`` int64 bag ids: a random permutation of the rows cut into bags of ``bag_size`` (the last smaller).

    Example::

        >>> bags = random_bags(7, 3, torch.Generator().manual_seed(0))
        >>> torch.bincount(bags).tolist()
        [3, 3, 1]
    """
    if bag_size < 1:
        raise ValueError(f"bag_size must be at least 1, got {bag_size}.")
    bags = torch.empty(num_rows, dtype=torch.long)
    bags[torch.randperm(num_rows, generator=generator)] = torch.arange(num_rows) // bag_size
    return bags


def _bag_mean_rows(values: torch.Tensor, bag_ids: torch.Tensor) -> torch.Tensor:
    """Each row's bag mean of ``values`` (``(N,)`` or ``(N, C)``)."""
    counts = torch.bincount(bag_ids).to(values.dtype)
    sums = values.new_zeros((len(counts), *values.shape[1:])).index_add(0, bag_ids, values)
    means = sums / counts.reshape(-1, *([1] * (values.dim() - 1)))
    return means[bag_ids]


class _AggregateDataModule(SplitDataModule):
    """Training batches of ``bags_per_batch`` whole bags (a :class:`BagBatchSampler`), resumable mid-epoch."""

    #: Training batches are whole bags (``bags_per_batch``); ``eval_batch_size`` sizes the other stages.
    batch_size = hparam(None)
    bags_per_batch = hparam()
    bag_size = hparam()

    @override
    def train_sampler(self, dataset: Dataset) -> Sampler:
        """The training batches: ``bags_per_batch`` whole bags in an order drawn from ``seed`` and the epoch."""
        return BagBatchSampler(dataset.bag_ids, self.bags_per_batch, seed=self.seed)  # type: ignore[attr-defined]

    @override
    def _apply_position(self, sampler: Sampler | None) -> None:
        position = getattr(self, "_resume_position", None)
        if position is not None and isinstance(sampler, BagBatchSampler):
            sampler.resume_at(position["epoch"], position["batches"])  # the sampler's items are batches
        else:
            super()._apply_position(sampler)

    @override
    def train_dataloader(self) -> DataLoader:
        if not self.datasets:
            self.setup()
        dataset = self.datasets["train"]
        return bag_dataloader(
            dataset,
            self._training_sampler(dataset),  # type: ignore[arg-type]
            loader_class=ResumableDataLoader,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )


def _check_common(bag_size: int, bags_per_batch: int, eval_batch_size: int) -> None:
    for name, value in (
        ("bag_size", bag_size),
        ("bags_per_batch", bags_per_batch),
        ("eval_batch_size", eval_batch_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


class AggregateRegressionDataModule(_AggregateDataModule):
    """Linear regression seen through bag means: ``y = xᵀθ + ε``, random bags of ``bag_size``, each row its bag's mean.

    ``x ~ N(0, I_d)``, ``θ ~ N(0, I_d)`` and ``ε ~ N(0, noise²)`` are drawn from ``seed`` alone. The ``num_samples``
    training rows are cut into random bags of ``bag_size`` (the last bag smaller when ``bag_size`` does not divide
    ``num_samples``); every training row's ``target`` is its bag's mean ``ȳ_a`` and ``bag_id`` its bag. Validation
    (``num_val``) and test (``num_test``) rows are fresh instances with their own noisy ``y`` as ``target``: their MSE
    is the instance-level test error (its floor is ``noise²``; :attr:`theta` gives the excess risk of a linear
    model, ``‖θ̂ − θ‖² + b²``). ``image`` holds the ``(B, d)`` features.

    Random bags are the regime where the instance-level loss is biased: with centred ``x``,
    ``E[ȳ_a | x_i] = x_iᵀθ/k``, so least squares on ``(x_i, ȳ_{a(i)})`` estimates ``θ/k``.

    Args:
        num_samples: training instances ``n``.
        num_features: ``d``.
        bag_size: instances per bag ``k``.
        noise: standard deviation of ``ε``.
        num_val: validation instances.
        num_test: test instances.
        bags_per_batch: bags per training batch on each process (the default 6 gives 10 steps per epoch).
        eval_batch_size: rows per validation/test batch.
        seed: seed of θ, the data, the bags and the training order.
        num_workers, pin_memory, persistent_workers: DataLoader options.

    Example::

        >>> dm = AggregateRegressionDataModule(num_samples=40, num_features=3, bag_size=4, bags_per_batch=2)
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> batch["image"].shape, batch["target"].shape, torch.unique(batch["bag_id"]).numel()
        (torch.Size([8, 3]), torch.Size([8]), 2)
        >>> sorted(next(iter(dm.test_dataloader())))  # instances: their own y, no bag
        ['image', 'index', 'target']
    """

    num_classes = None  # a regression: no classes
    split_arguments = ("num_samples", "num_features", "noise", "num_val", "num_test")
    task_arguments = ("bag_size",)

    def __init__(
        self,
        num_samples: int = 600,
        num_features: int = 20,
        bag_size: int = 10,
        noise: float = 0.5,
        num_val: int = 200,
        num_test: int = 1000,
        bags_per_batch: int = 6,
        eval_batch_size: int = 500,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__()
        _check_common(bag_size, bags_per_batch, eval_batch_size)
        if num_samples < 1 or num_features < 1 or num_val < 1 or num_test < 1:
            raise ValueError(
                f"num_samples ({num_samples}), num_features ({num_features}), num_val ({num_val}) and num_test "
                f"({num_test}) must be positive."
            )
        if noise < 0:
            raise ValueError(f"noise is a standard deviation, 0 or more, got {noise}.")
        self.save_hyperparameters()
        self.theta: torch.Tensor | None = None  # (d,), set by setup

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        generator = torch.Generator().manual_seed(int(hp.seed))
        d = int(hp.num_features)
        theta = torch.randn(d, generator=generator)

        def draw(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.randn(rows, d, generator=generator)
            return x, x @ theta + float(hp.noise) * torch.randn(rows, generator=generator)

        (x, y), val, test = draw(int(hp.num_samples)), draw(int(hp.num_val)), draw(int(hp.num_test))
        bags = random_bags(int(hp.num_samples), int(hp.bag_size), generator)
        self.theta = theta
        self.datasets = {
            "train": AggregateDataset(x, _bag_mean_rows(y, bags), bags),
            "val": AggregateDataset(*val),
            "test": AggregateDataset(*test),
        }


class LabelProportionsDataModule(_AggregateDataModule):
    """scikit-learn's digits in random bags, each training row labelled only with its bag's class proportions.

    The 1,797 8×8 digits (bundled with scikit-learn, no download) are split into train, validation and test as
    :class:`~lightning_regs.datamodules.DigitsDataModule` splits them (seeded, kept in the checkpoint). The training
    digits are cut into random bags of ``bag_size`` (the last bag smaller when it does not divide them); each
    training row's ``target`` is its bag's ``(10,)`` class-proportion vector and ``bag_id`` its bag, so no training
    row reveals its own class. Validation and test rows carry their own class id in ``target``: accuracy there is
    the instance-level accuracy. ``image`` holds the ``(B, 64)`` pixels, scaled to [0, 1] and normalised with the
    training split's mean and standard deviation.

    Args:
        bag_size: digits per bag.
        bags_per_batch: bags per training batch on each process.
        val_fraction: share of the digits held out for validation.
        test_fraction: share of the digits held out for testing.
        eval_batch_size: rows per validation/test batch.
        seed: seed of the split, the bags and the training order.
        num_workers, pin_memory, persistent_workers: DataLoader options.

    Example::

        >>> dm = LabelProportionsDataModule(bag_size=8, bags_per_batch=4)
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> batch["image"].shape, batch["target"].shape, bool(torch.allclose(batch["target"].sum(1), torch.ones(32)))
        (torch.Size([32, 64]), torch.Size([32, 10]), True)
        >>> next(iter(dm.val_dataloader()))["target"].dtype, dm.num_classes
        (torch.int64, 10)
    """

    num_classes = 10
    split_arguments = ("val_fraction", "test_fraction")
    task_arguments = ("bag_size",)

    val_fraction = hparam()
    test_fraction = hparam()

    def __init__(
        self,
        bag_size: int = 10,
        bags_per_batch: int = 8,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        eval_batch_size: int = 512,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__()
        _check_common(bag_size, bags_per_batch, eval_batch_size)
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction} must lie in (0, 1) and leave digits "
                "to train on (their sum below 1)."
            )
        self.save_hyperparameters()

    def draw_split(self, num_samples: int) -> dict[str, torch.Tensor]:
        """The seeded split of ``range(num_samples)`` into train, validation and test indices (as the digits')."""
        return fraction_split(num_samples, self.seed, self.val_fraction, self.test_fraction)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        features = torch.as_tensor(digits.data, dtype=torch.float32) / 16.0
        labels = torch.as_tensor(digits.target, dtype=torch.long)
        if not self.split_indices:
            self.split_indices = self.draw_split(len(labels))
        train = self.split_indices["train"]
        mean, std = features[train].mean(), features[train].std()
        features = (features - mean) / std
        # the bags: a stream of its own, so that they do not depend on how many draws the split took
        bags = random_bags(len(train), int(self.bag_size), torch.Generator().manual_seed(self.seed * 1_000_003 + 1))
        proportions = _bag_mean_rows(torch.nn.functional.one_hot(labels[train], 10).float(), bags)
        datasets: dict[str, Dataset] = {"train": AggregateDataset(features[train], proportions, bags)}
        for split in ("val", "test"):
            indices = self.split_indices[split]
            datasets[split] = AggregateDataset(features[indices], labels[indices])
        self.datasets = datasets
