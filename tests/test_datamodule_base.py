"""The contract every DataModule inherits from ``SplitDataModule``: num_classes, the resume rule, the state's format."""

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from lightning_regs.datamodules import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    CUB200DataModule,
    DigitsDataModule,
    DigitsSubsetDataModule,
    EpochShuffleSampler,
    MVTecADDataModule,
    NumClassesUnknownError,
    RadImageNetDataModule,
    SplitDataModule,
)
from lightning_regs.models import SmallCNN
from lightning_regs.tasks import ImageClassifier
from tests.helpers.fake_datasets_medical import make_mvtec, make_radimagenet
from tests.helpers.fake_datasets_vision import write_cifar, write_cub
from tests.helpers.trainers import QUIET


@dataclass(frozen=True)
class Case:
    """How to write a tiny data set under a folder and build its DataModule there."""

    write: Callable[[Path], Any]
    build: Callable[..., SplitDataModule]
    num_classes: int | None  # None: known only after setup (or when given)
    classes_on_disk: int


def _no_data(root: Path) -> None:
    pass


def _mvtec(root: Path) -> None:
    make_mvtec(root, num_train=6, num_good=4, num_defect=3)


LOADER = {"num_workers": 0, "batch_size": 4}
CASES = {
    "digits": Case(_no_data, lambda root, **kw: DigitsDataModule(batch_size=128, **kw), 10, 10),
    "digits_subset": Case(
        _no_data, lambda root, **kw: DigitsSubsetDataModule(steps_per_epoch=4, batch_size=128, **kw), 10, 10
    ),
    "cifar10": Case(
        write_cifar, lambda root, **kw: CIFAR10DataModule(root=str(root), val_fraction=0.2, **LOADER, **kw), 10, 10
    ),
    "cifar100": Case(
        lambda root: write_cifar(root, num_classes=100),
        lambda root, **kw: CIFAR100DataModule(root=str(root), **LOADER, **kw),
        100,
        100,
    ),
    "cub": Case(write_cub, lambda root, **kw: CUB200DataModule(root=str(root), image_size=8, **LOADER, **kw), None, 4),
    "cub_gcd": Case(
        write_cub, lambda root, **kw: CUB200DataModule(root=str(root), gcd=True, image_size=8, **LOADER, **kw), None, 4
    ),
    "mvtec": Case(
        _mvtec, lambda root, **kw: MVTecADDataModule(root, "bottle", 8, val_split="from_test", **LOADER, **kw), 2, 2
    ),
    "radimagenet_csv": Case(
        make_radimagenet, lambda root, **kw: RadImageNetDataModule(root, image_size=8, **LOADER, **kw), None, 4
    ),
    "radimagenet_folder": Case(
        make_radimagenet,
        lambda root, **kw: RadImageNetDataModule(root, mode="folder", image_size=8, **LOADER, **kw),
        None,
        4,
    ),
}


@pytest.fixture(params=sorted(CASES))
def case(request, tmp_path) -> tuple[Case, Path]:
    case = CASES[request.param]
    case.write(tmp_path / "data")
    return case, tmp_path / "data"


def _training_order(dm: SplitDataModule, epoch: int = 0) -> list[int]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [int(i) for batch in loader for i in batch["index"]]


def _contents(dm: SplitDataModule) -> dict[str, list]:
    """What each stage holds, by sample identity (file, or target and pixels for in-memory data)."""
    contents = {}
    for split, dataset in dm.datasets.items():
        if hasattr(dataset, "items"):
            contents[split] = [str(item[0]) for item in dataset.items]
        elif hasattr(dataset, "paths"):
            contents[split] = [str(path) for path in dataset.paths]
        else:
            pixels = dataset.images.flatten(1).sum(1).tolist()
            contents[split] = list(zip(dataset.targets.tolist(), pixels, strict=True))
    return contents


def test_num_classes_is_an_int_after_construction_or_a_clear_error(case):
    case, root = case
    dm = case.build(root)
    if case.num_classes is not None:
        assert type(dm.num_classes) is int and dm.num_classes == case.num_classes
    else:
        with pytest.raises(NumClassesUnknownError, match=r"setup\(\) first, or pass num_classes=<N>"):
            _ = dm.num_classes
        assert getattr(dm, "num_classes", None) is None  # duck-typed readers see "not known yet"
        assert "num_classes" not in dm.hparams  # None would clash with the model's when Lightning logs both
        assert type(case.build(root, num_classes=case.classes_on_disk).num_classes) is int
    dm.setup("fit")
    assert type(dm.num_classes) is int and dm.num_classes == case.classes_on_disk


@pytest.mark.parametrize("name", ["cub", "radimagenet_csv"])
def test_a_given_num_classes_that_the_data_contradicts_is_refused_at_setup(name, tmp_path):
    case = CASES[name]
    case.write(tmp_path / "data")
    dm = case.build(tmp_path / "data", num_classes=200)
    assert dm.num_classes == 200
    with pytest.raises(ValueError, match=r"holds 4 classes but num_classes=200 was given\. Pass num_classes=4"):
        dm.setup("fit")


def test_resuming_adopts_the_checkpoints_split_and_training_order_with_one_warning(case):
    case, root = case
    original = case.build(root, seed=0)
    original.setup("fit")
    state = original.state_dict()
    other = case.build(root, seed=1)
    other.setup("fit")
    differs = other.split_indices.keys() != state.keys() or _contents(other) != _contents(original)
    assert differs or _training_order(other) != _training_order(original)  # the seed matters: the test can fail
    resumed = case.build(root, seed=1)
    resumed.setup("fit")  # as Lightning does before it restores the checkpoint
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed.load_state_dict(state)
    messages = [str(w.message) for w in caught if "checkpoint" in str(w.message)]
    assert len(messages) == 1 and "seed 0" in messages[0] and "seed 1" in messages[0]
    assert resumed.seed == 0
    assert resumed.split_indices.keys() == original.split_indices.keys()
    for name, indices in original.split_indices.items():
        assert torch.equal(resumed.split_indices[name], indices)
    assert _contents(resumed) == _contents(original)
    for epoch in (0, 3):
        assert _training_order(resumed, epoch) == _training_order(original, epoch)


def test_the_state_loads_with_weights_only_into_a_fresh_module(case, tmp_path):
    case, root = case
    original = case.build(root, seed=0)
    original.setup("fit")
    torch.save(original.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    fresh = case.build(root, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh.load_state_dict(state)
    assert not [w for w in caught if "checkpoint" in str(w.message)]  # same arguments: nothing to say
    assert _contents(fresh) == _contents(original) and _training_order(fresh) == _training_order(original)
    assert torch.load(tmp_path / "state.pt", weights_only=True).keys() == fresh.state_dict().keys()


def test_arguments_live_in_hparams_only(case):
    case, root = case
    dm = case.build(root, seed=3)
    assert not set(vars(dm)) & set(dm.hparams)  # no argument copied to an attribute by hand
    assert dm.seed == dm.hparams.seed == 3 and dm.batch_size == dm.hparams.batch_size
    dm.batch_size, dm.num_workers = 2, 0  # Lightning's batch-size finder sets it like this
    assert dm.hparams.batch_size == 2 and dm.eval_batch_size == 2 and dm.persistent_workers is False


def test_split_arguments_that_differ_are_named_in_the_one_warning():
    original = DigitsDataModule(seed=0, val_fraction=0.2)
    original.setup()
    resumed = DigitsDataModule(seed=0, val_fraction=0.1, test_fraction=0.2)
    with pytest.warns(UserWarning, match=r"val_fraction 0.2, test_fraction 0.15; this module has val_fraction 0.1"):
        resumed.load_state_dict(original.state_dict())
    assert resumed.val_fraction == 0.2 and len(resumed.datasets["val"]) == len(original.datasets["val"])


def test_an_unchanged_state_does_not_set_the_data_up_again():
    dm = DigitsDataModule()
    dm.setup()
    datasets = dm.datasets
    dm.load_state_dict(dm.state_dict())
    assert dm.datasets is datasets


class _RecordTrainIndices(pl.Callback):
    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append(batch["index"].tolist())


def _fit(tmp_path: Path, seed: int, max_epochs: int, ckpt_path: Path | None = None) -> list[list[int]]:
    record = _RecordTrainIndices()
    task = ImageClassifier(SmallCNN(num_classes=10, in_channels=1, width=4), num_classes=10)
    trainer = pl.Trainer(max_epochs=max_epochs, default_root_dir=tmp_path, callbacks=[record], **QUIET)
    trainer.fit(task, DigitsDataModule(batch_size=512, seed=seed), ckpt_path=ckpt_path)
    if ckpt_path is None:
        trainer.save_checkpoint(tmp_path / f"epochs{max_epochs}.ckpt")
    return record.seen


def test_a_run_resumed_with_another_seed_ends_as_the_uninterrupted_one(tmp_path):
    uninterrupted = _fit(tmp_path, seed=0, max_epochs=2)
    first = _fit(tmp_path, seed=0, max_epochs=1)
    with pytest.warns(UserWarning, match="checkpoint's split is used"):
        rest = _fit(tmp_path, seed=1, max_epochs=2, ckpt_path=tmp_path / "epochs1.ckpt")
    assert first + rest == uninterrupted


def _old_repeated_shuffle(num_samples: int, length: int, seed: int, epoch: int) -> list[int]:
    """RepeatedShuffleSampler.__iter__ as it was before it became an EpochShuffleSampler."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    passes = -(-length // num_samples)
    order = torch.cat([torch.randperm(num_samples, generator=generator) for _ in range(passes)])
    return order[:length].tolist()


@pytest.mark.parametrize(("num_samples", "length", "seed", "epoch"), [(3, 7, 0, 0), (10, 25, 4, 2), (7, 7, 1, 5)])
def test_one_sampler_gives_the_orders_of_both_old_ones(num_samples, length, seed, epoch):
    sampler = EpochShuffleSampler(num_samples, seed, length=length)
    sampler.set_epoch(epoch)
    assert list(sampler) == _old_repeated_shuffle(num_samples, length, seed, epoch) and len(sampler) == length
    one_pass = EpochShuffleSampler(num_samples, seed)
    one_pass.set_epoch(epoch)
    assert list(one_pass) == _old_repeated_shuffle(num_samples, num_samples, seed, epoch)


def test_digits_subset_trains_in_the_old_repeated_order():
    dm = DigitsSubsetDataModule(steps_per_epoch=3, batch_size=500, val_fraction=0.4435, test_fraction=0.0, seed=2)
    assert _training_order(dm, epoch=1) == _old_repeated_shuffle(1000, 1500, seed=2, epoch=1)


def test_options_init_did_not_take_stay_out_of_the_checkpoint_hyperparameters():
    from lightning_regs.datamodules import DigitsDataModule

    dm = DigitsDataModule(batch_size=16)
    dm.eval_batch_size = 64  # DigitsDataModule has no eval_batch_size argument
    dm.batch_size = 32  # it has this one: the checkpoint records the new value
    assert dm.eval_batch_size == 64 and "eval_batch_size" not in dm.hparams
    assert dm.hparams["batch_size"] == 32
    DigitsDataModule(**dm.hparams)  # what load_from_checkpoint does with them


def test_a_host_of_the_deprecated_mixin_can_still_set_num_classes():
    from lightning_regs.datamodules import DigitsDataModule

    class Old(DigitsDataModule):
        def __init__(self) -> None:
            super().__init__()
            self.num_classes = 10

    assert Old().num_classes == 10
