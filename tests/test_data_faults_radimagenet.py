"""Fault injection on RadImageNet's CSVs and class index: short rows, files listed in two splits, bad JSON."""

from __future__ import annotations

import json
import re

import pytest

from lightning_regs.datamodules.radimagenet import RadImageNetDataModule
from tests.helpers.fake_datasets_medical import make_radimagenet, write_radimagenet_csv

RAW = {"image_size": 8, "augment": False, "batch_size": 4}


@pytest.fixture
def clean(tmp_path):
    return make_radimagenet(tmp_path / "rin")


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (("radiology_ai/CT/abd/normal/train_000.png",), "has 1 field under a header of 2"),
        (("radiology_ai/CT/abd/normal/train_000.png", ""), "has an empty label"),
        (("", "CT/abd/normal"), "has an empty filename"),
        (("radiology_ai/CT/abd/normal/train_000.png", "CT/abd/normal", "extra"), "has 3 fields under a header of 2"),
    ],
)
def test_a_malformed_csv_row_is_named_with_its_line(clean, row, problem):
    rows = [*clean["rows"]["val"], row]
    write_radimagenet_csv(clean["root"], "val", rows)
    line = len(rows) + 1
    pattern = (
        rf"RadiologyAI_val\.csv, line {line}: {problem}; expected filename,label, got {re.escape(repr(list(row)))}"
    )
    with pytest.raises(ValueError, match=pattern):
        RadImageNetDataModule(clean["root"], **RAW).setup("fit")


def _listed_in_train_and_test(clean) -> str:
    """Add the first training file to the test CSV again, under the same path and label."""
    filename, label = clean["rows"]["train"][0]
    write_radimagenet_csv(clean["root"], "test", [*clean["rows"]["test"], (filename, label)])
    return filename


def test_a_file_listed_in_two_splits_is_reported_per_the_policy(clean):
    filename = _listed_in_train_and_test(clean)
    with pytest.raises(ValueError, match=rf"(?s)listed_twice: 1 \(e\.g\. {re.escape(filename)}\)"):
        RadImageNetDataModule(clean["root"], bad_images="raise", **RAW).setup("fit")
    warned = RadImageNetDataModule(clean["root"], **RAW)
    with pytest.warns(UserWarning, match=r"(?s)listed_twice: 1 .*\n0 files dropped"):
        warned.setup("fit")
    assert warned.report["listed_twice"] == [filename]
    assert len(warned.datasets["test"]) == len(clean["rows"]["test"]) + 1  # warn keeps it
    dropped = RadImageNetDataModule(clean["root"], bad_images="drop", **RAW)
    with pytest.warns(UserWarning, match="1 files dropped"):
        dropped.setup("fit")
    # the first listing (train) stays, the later one (test) goes
    assert len(dropped.datasets["train"]) == len(clean["rows"]["train"])
    assert len(dropped.datasets["test"]) == len(clean["rows"]["test"])
    assert filename not in {str(path.relative_to(clean["root"])) for path, _ in dropped.datasets["test"].items}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{oops", r"is not valid JSON \(Expecting property name"),
        ('{"classes": ["a"]}', r"must be a JSON object with a 'class_names' list"),
        ('{"class_names": "CT/abd/normal"}', r"must be a JSON object with a 'class_names' list"),
        ('{"class_names": ["CT/abd/normal", 3]}', r"'class_names' must hold class names \(strings\)"),
        ('{"class_names": ["US/ovary", "US/ovary"]}', r"names 'US/ovary' twice"),
        ('{"class_names": []}', r"'class_names' is empty"),
        ('{"label_level": "modality", "class_names": ["CT", "MR", "US"]}', r"was written at label_level='modality'"),
    ],
)
def test_a_malformed_class_index_is_named(clean, tmp_path, content, problem):
    index = tmp_path / "classes.json"
    index.write_text(content)
    pattern = rf"{re.escape(str(index))}.*{problem}.*(Delete it|fix it)"
    with pytest.raises(ValueError, match=pattern):
        RadImageNetDataModule(clean["root"], class_index_path=index, **RAW).setup("fit")


def test_a_valid_class_index_is_still_reused(clean, tmp_path):
    index = tmp_path / "classes.json"
    names = [*sorted({label for _, label in clean["rows"]["train"]}), "XR/chest/extra"]
    index.write_text(json.dumps({"label_level": "label", "class_names": names}))
    dm = RadImageNetDataModule(clean["root"], class_index_path=index, **RAW)
    dm.setup("fit")
    assert list(dm.class_names) == names
