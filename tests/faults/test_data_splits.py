"""Empty and one-sided splits, and class names that differ only by case or spaces, are refused at setup (kind 7)."""

from __future__ import annotations

import csv
import re
import shutil

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset
from torchvision.io import write_png

from lightning_regs.datamodules import (
    DatasetDataModule,
    DigitsBagsDataModule,
    DigitsDataModule,
    DigitsSubsetDataModule,
    FeatureBagDataModule,
    MVTecADDataModule,
    RadImageNetDataModule,
)
from lightning_regs.datamodules.base import SplitError
from tests.helpers.fake_datasets_medical import MVTEC_SIZE, make_mvtec, make_radimagenet, write_radimagenet_csv

REFUSED = pytest.mark.fault(area="data", outcome="refused")
HANDLED = pytest.mark.fault(area="data", outcome="handled")
DIGITS = {"digits": DigitsDataModule, "digits_subset": lambda **kw: DigitsSubsetDataModule(steps_per_epoch=2, **kw)}


@REFUSED
@pytest.mark.parametrize(
    ("split", "fractions"),
    [("val", {"val_fraction": 0.0001}), ("val", {"val_fraction": 0.0002, "test_fraction": 0.1}),
     ("test", {"test_fraction": 0.0001}), ("test", {"val_fraction": 0.3, "test_fraction": 0.0002})],
)  # fmt: skip
@pytest.mark.parametrize("name", list(DIGITS))
def test_a_fraction_that_rounds_to_no_sample_is_refused(name, split, fractions) -> None:
    module = DIGITS[name](**fractions)
    with pytest.raises(
        SplitError, match=rf"the {split} split is empty \(0 samples\); {split}_fraction=.* rounds to zero"
    ):
        module.setup("fit")


@HANDLED
@pytest.mark.parametrize("name", list(DIGITS))
def test_no_test_split_asked_for_with_test_fraction_zero_is_accepted(name) -> None:
    module = DIGITS[name](test_fraction=0.0)
    module.setup("fit")
    assert len(module.datasets["test"]) == 0 and len(module.datasets["train"]) > 0


def _data(n: int) -> TensorDataset:
    return TensorDataset(torch.randn(n, 2), torch.arange(n) % 2)


@REFUSED
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_an_empty_own_data_set_is_refused(split) -> None:
    given = {"train": _data(8), "val": _data(4), "test": _data(4), split: _data(0)}
    module = DatasetDataModule(given["train"], given["val"], given["test"])
    with pytest.raises(SplitError, match=rf"DatasetDataModule: the {split} split is empty \(0 samples\)"):
        module.setup("fit")


class TwoClassVal(DatasetDataModule):
    two_class_splits = ("val",)


@REFUSED
@pytest.mark.parametrize("only", [0, 1])
def test_a_one_sided_split_where_the_metric_needs_both_classes_is_refused(only) -> None:
    val = TensorDataset(torch.randn(4, 2), torch.full((4,), only))
    with pytest.raises(SplitError, match=rf"the val split holds 4 samples of class {only} only.*needs both classes"):
        TwoClassVal(_data(8), val).setup("fit")


@HANDLED
def test_a_two_sided_split_is_accepted() -> None:
    TwoClassVal(_data(8), _data(4)).setup("fit")


class Named(Dataset):
    def __init__(self, classes) -> None:
        self.classes = list(classes)

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        return torch.zeros(2), index % len(self.classes)


VARIANTS = [("cat", "Cat"), ("cat", "cat "), ("cat", " cat"), ("dog", "DOG"), ("a b", "a  b"), ("Cat", "cat\t")]


@REFUSED
@pytest.mark.parametrize(("first", "second"), VARIANTS)
def test_own_class_names_that_differ_only_by_case_or_spaces_are_refused(first, second) -> None:
    module = DatasetDataModule(Named([first, "bird", second]))
    with pytest.raises(
        SplitError, match=re.escape(f"class names {first!r} and {second!r} differ only by case or spaces")
    ):
        module.setup("fit")


@HANDLED
def test_distinct_class_names_are_accepted() -> None:
    DatasetDataModule(Named(["cat", "dog", "bird"])).setup("fit")


@REFUSED
@pytest.mark.parametrize("variant", ["trailing space", "upper case", "lower case"])
def test_radimagenet_labels_that_differ_only_by_case_or_spaces_are_refused(tmp_path, variant) -> None:
    manifest = make_radimagenet(tmp_path)
    rows = list(manifest["rows"]["train"])
    label = rows[0][1]
    changed = {"trailing space": label + " ", "upper case": label.upper(), "lower case": label.lower()}[variant]
    write_radimagenet_csv(tmp_path, "train", [(rows[0][0], changed), *rows[1:]])
    module = RadImageNetDataModule(tmp_path, image_size=8, check_images="exists")
    with pytest.raises(SplitError, match=r"the CSVs' label column: the class names .* differ only by case or spaces"):
        module.setup("fit")


def _slides(root, labels) -> None:
    (root / "features").mkdir(parents=True)
    rows = [("slide_id", "label", "split")]
    for i, (label, split) in enumerate(labels):
        torch.save(torch.randn(3, 4), root / "features" / f"s{i}.pt")
        rows.append((f"s{i}", label, split))
    with open(root / "slides.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)


@REFUSED
@pytest.mark.parametrize("variant", ["Tumor", "tUmor", "TUMOR"])
def test_slide_labels_that_differ_only_by_case_or_spaces_are_refused(tmp_path, variant) -> None:
    labels = [("tumor", "train"), ("normal", "train"), (variant, "train"), ("tumor", "val"), ("normal", "test")]
    _slides(tmp_path, labels)
    with pytest.raises(
        SplitError,
        match=rf"slides.csv: the class names '(tumor|{variant})' and '(tumor|{variant})' differ only by case",
    ):
        FeatureBagDataModule(tmp_path).setup("fit")


@HANDLED
def test_digits_bags_splits_pass_the_checks() -> None:
    module = DigitsBagsDataModule(num_train_bags=10, num_val_bags=4, num_test_bags=4)
    module.setup("fit")
    assert all(len(data) > 0 for data in module.datasets.values())


def _only_one_anomalous_image(root) -> None:
    base = root / "bottle"
    for folder in ("test", "ground_truth"):
        shutil.rmtree(base / folder / "contamination")
    (base / "test" / "broken_large" / "001.png").unlink()
    (base / "ground_truth" / "broken_large" / "001_mask.png").unlink()


def _empty_folder(root, kind: str) -> None:
    base = root / "bottle"
    folders = (
        [base / "test" / "good"] if kind == "good" else [base / "test" / d for d in ("broken_large", "contamination")]
    )
    for folder in folders:
        for image in folder.iterdir():
            image.unlink()
    if kind != "good":
        for mask in (base / "ground_truth").rglob("*.png"):
            mask.unlink()


@REFUSED
@pytest.mark.parametrize("empty", ["good", "defects"])
def test_an_mvtec_test_set_of_one_kind_is_refused(tmp_path, empty) -> None:
    root = make_mvtec(tmp_path)
    _empty_folder(root, empty)
    module = MVTecADDataModule(root, "bottle", image_size=16, batch_size=2)
    folder = "good" if empty == "good" else "broken_large"
    with pytest.raises(ValueError, match=rf"bottle is malformed:\n- .*bottle/test/{folder} holds no \.png images"):
        module.setup("fit")


@REFUSED
def test_an_mvtec_from_test_split_without_an_anomaly_for_validation_is_refused(tmp_path) -> None:
    root = make_mvtec(tmp_path)
    _only_one_anomalous_image(root)
    module = MVTecADDataModule(root, "bottle", image_size=16, batch_size=2, val_split="from_test")
    with pytest.raises(
        SplitError,
        match=r"the val split holds 1 samples of class 0 \('good'\) only.*at least 2 images.*val_split='test'",
    ):
        module.setup("fit")


@HANDLED
@pytest.mark.parametrize("val_split", ["test", "from_test"])
def test_an_mvtec_test_set_of_both_kinds_is_accepted(tmp_path, val_split) -> None:
    module = MVTecADDataModule(make_mvtec(tmp_path), "bottle", image_size=16, batch_size=2, val_split=val_split)
    module.setup("fit")
    for split in ("val", "test"):
        assert set(module.datasets[split].labels.tolist()) == {0, 1}


@REFUSED
def test_an_all_zero_mask_of_an_anomalous_image_is_a_named_error(tmp_path) -> None:
    root = make_mvtec(tmp_path)
    mask = root / "bottle" / "ground_truth" / "contamination" / "001_mask.png"
    write_png(torch.zeros(1, *MVTEC_SIZE, dtype=torch.uint8), str(mask))
    module = MVTecADDataModule(root, "bottle", image_size=16, batch_size=2)
    module.setup("test")
    test = module.datasets["test"]
    (position,) = [i for i, (_, m, _) in enumerate(test.items) if m is not None and m.name == mask.name and
                   m.parent.name == "contamination"]  # fmt: skip
    with pytest.raises(ValueError, match=rf"Mask {re.escape(str(mask))} of the anomalous image .* marks no pixel"):
        test[position]
    assert test[0]["image"].shape == (3, 16, 16)  # the other images still load
