"""FeatureBagDataModule on tiny CLAM-style folders: slides.csv and one features file per slide, in their real formats.

Each written slide's features identify it (slide k holds k + row/100 in every column), so the tests check that a
bag is the slide's own features, in its own split, with its own label.
"""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer

from lightning_regs.batch import IMAGE, INDEX, INSTANCE_MASK, TARGET
from lightning_regs.datamodules.base import NumClassesUnknownError
from lightning_regs.datamodules.feature_bags import FeatureBagDataModule
from tests.helpers.trainers import QUIET

DIM = 4
# (slide_id, label, split, patches): two classes in every split, bags of different sizes.
SLIDES = [
    ("tumor_001", "tumor", "train", 5),
    ("normal_001", "normal", "train", 3),
    ("tumor_002", "tumor", "train", 1),
    ("normal_002", "normal", "train", 4),
    ("tumor_003", "tumor", "train", 2),
    ("normal_003", "normal", "train", 6),
    ("tumor_004", "tumor", "val", 3),
    ("normal_004", "normal", "val", 2),
    ("tumor_005", "tumor", "test", 4),
    ("normal_005", "normal", "test", 1),
]


def slide_features(number: int, patches: int, dim: int = DIM) -> torch.Tensor:
    return torch.full((patches, dim), float(number)) + torch.arange(patches, dtype=torch.float32)[:, None] / 100


def write_csv(
    path: Path, rows: list[tuple[str, ...]], header: tuple[str, ...] = ("slide_id", "label", "split")
) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_slides(
    root: Path, slides=SLIDES, form: str = "tensor", features_dir: str = "features", dtype=torch.float32
) -> dict[str, torch.Tensor]:
    """Write ``root/slides.csv`` and ``root/<features_dir>/<slide_id>.<pt|h5>``; return each slide's features."""
    folder = root / features_dir
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for number, (slide_id, _, _, patches) in enumerate(slides):
        features = slide_features(number, patches)
        written[slide_id] = features
        coords = torch.arange(patches * 2).reshape(patches, 2) * 256
        if form == "tensor":
            torch.save(features.to(dtype), folder / f"{slide_id}.pt")
        elif form == "dict":
            torch.save({"features": features.to(dtype), "coords": coords}, folder / f"{slide_id}.pt")
        else:
            import h5py

            with h5py.File(folder / f"{slide_id}.h5", "w") as handle:
                handle.create_dataset("features", data=features.numpy())
                handle.create_dataset("coords", data=coords.numpy())
    write_csv(root / "slides.csv", [row[:3] for row in slides])
    return written


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "wsi"


@pytest.fixture
def written(root: Path) -> dict[str, torch.Tensor]:
    return write_slides(root)


def bags_of(loader) -> dict[int, tuple[torch.Tensor, int]]:
    """index -> (the bag's real instances, target), checking the padding and the mask on the way."""
    found = {}
    for batch in loader:
        image, mask = batch[IMAGE], batch[INSTANCE_MASK]
        assert image.dtype == torch.float32 and batch[TARGET].dtype == torch.int64 and mask.dtype == torch.bool
        assert image.shape[:2] == mask.shape and mask.any(dim=1).all()
        assert (image[~mask] == 0).all()  # padding is zeros
        for row, index in enumerate(batch[INDEX].tolist()):
            found[index] = (image[row][mask[row]], int(batch[TARGET][row]))
    return found


def assert_split_is(dm: FeatureBagDataModule, split: str, written: dict[str, torch.Tensor], slides=SLIDES) -> None:
    rows = [row for row in slides if row[2] == split]
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    found = bags_of(loader)
    assert sorted(found) == list(range(len(rows)))
    assert dm.datasets[split].slide_ids == [row[0] for row in rows]
    for index, (slide_id, label, _, _) in enumerate(rows):
        features, target = found[index]
        torch.testing.assert_close(features, written[slide_id], rtol=0, atol=0)
        assert dm.classes[target] == (int(label) if isinstance(dm.classes[0], int) else label)


# loading and batching --------------------------------------------------------------------------------------------


def test_each_split_yields_its_slides_features_and_labels_padded_with_a_mask(root, written):
    dm = FeatureBagDataModule(root, batch_size=2, eval_batch_size=3)
    dm.setup("fit")
    assert dm.classes == ("normal", "tumor") and dm.num_classes == 2 and dm.feature_dim == DIM
    assert [len(dm.datasets[split]) for split in ("train", "val", "test")] == [6, 2, 2]
    for split in ("train", "val", "test"):
        assert_split_is(dm, split, written)
    batch = next(iter(dm.val_dataloader()))  # tumor_004 (3 patches) and normal_004 (2) in one padded batch
    assert batch[IMAGE].shape == (2, 3, DIM) and batch[INSTANCE_MASK].tolist() == [[True] * 3, [True, True, False]]
    assert batch[TARGET].tolist() == [1, 0] and batch[INDEX].tolist() == [0, 1]


def test_batch_size_one_is_the_default_and_the_training_order_is_seeded(root, written):
    dm = FeatureBagDataModule(root, seed=3)
    batches = list(dm.train_dataloader())
    assert dm.batch_size == 1 and len(batches) == 6 and all(b[IMAGE].shape[0] == 1 for b in batches)
    assert all(b[INSTANCE_MASK].all() for b in batches)  # one bag a batch: nothing padded
    again = [b[INDEX].item() for b in FeatureBagDataModule(root, seed=3).train_dataloader()]
    assert [b[INDEX].item() for b in batches] == again


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_a_dict_with_features_and_coords_loads_as_a_tensor_does(root, dtype):
    written = write_slides(root, form="dict", dtype=dtype)
    dm = FeatureBagDataModule(root, eval_batch_size=2)
    dm.setup("fit")
    for split in ("train", "val", "test"):
        assert_split_is(dm, split, {k: v.to(dtype).float() for k, v in written.items()})


def test_integer_labels_are_class_ids(root):
    slides = [(s, {"tumor": "1", "normal": "0"}[label], split, n) for s, label, split, n in SLIDES]
    slides[0] = ("tumor_001", "2", "train", 5)  # a third class, in training only
    written = write_slides(root, slides)
    dm = FeatureBagDataModule(root, num_classes=3)
    assert dm.num_classes == 3  # known before setup when given
    dm.setup("fit")
    assert dm.classes == (0, 1, 2) and dm.num_classes == 3
    for split in ("train", "val", "test"):
        assert_split_is(dm, split, written, slides)


def test_integer_labels_with_a_gap_in_training_are_refused(root):
    slides = [(s, {"tumor": "2", "normal": "0"}[label], split, n) for s, label, split, n in SLIDES]
    slides[-1] = (slides[-1][0], "1", slides[-1][2], slides[-1][3])  # class 1 only outside training
    write_slides(root, slides)
    with pytest.raises(ValueError, match=r"no training slide has class \[1\] \(training labels: \[0, 2\]\)"):
        FeatureBagDataModule(root).setup("fit")


def test_num_classes_is_read_from_the_data_and_checked(root, written):
    with pytest.raises(NumClassesUnknownError, match=r"Call setup\(\) first"):
        _ = FeatureBagDataModule(root).num_classes
    with pytest.raises(ValueError, match=r"training split of .*slides.csv holds 2 classes but num_classes=3"):
        FeatureBagDataModule(root, num_classes=3).setup("fit")


def test_the_csv_and_features_dir_arguments_and_extra_columns(root, tmp_path):
    written = write_slides(root, features_dir="pt_files")
    rows = [(f"case_{i}", *row[:3]) for i, row in enumerate(SLIDES)]
    write_csv(tmp_path / "elsewhere.csv", rows, header=("case_id", "slide_id", "label", "split"))
    dm = FeatureBagDataModule(root, csv=tmp_path / "elsewhere.csv", features_dir="pt_files")
    dm.setup("fit")
    assert_split_is(dm, "val", written)
    assert dm.hparams.csv == os.fspath(tmp_path / "elsewhere.csv")  # stored as a string: loads with weights_only


def test_clam_h5_files(root):
    pytest.importorskip("h5py")
    written = write_slides(root, form="h5", features_dir="h5_files")
    dm = FeatureBagDataModule(root, features_dir="h5_files", eval_batch_size=2)
    dm.setup("fit")
    for split in ("train", "val", "test"):
        assert_split_is(dm, split, written)


def test_h5_files_without_h5py_name_the_package(root, monkeypatch):
    write_slides(root)
    (root / "features" / "tumor_004.pt").unlink()
    (root / "features" / "tumor_004.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py fails, as it does where it is not installed
    with pytest.raises(ImportError, match=r"tumor_004.h5 is an HDF5 features file .*pip install h5py"):
        FeatureBagDataModule(root).setup("fit")


# refusals at setup -------------------------------------------------------------------------------------------------


def rewrite(root: Path, rows: list[tuple[str, ...]], header=("slide_id", "label", "split")) -> None:
    write_csv(root / "slides.csv", rows, header)


def csv_rows() -> list[tuple[str, ...]]:
    return [row[:3] for row in SLIDES]


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (
            lambda rows: [*rows, ("tumor_001", "tumor", "test")],
            ValueError,
            r"line 12: slide 'tumor_001' is listed "
            r"again \(first at line 2\)",
        ),
        (
            lambda rows: [*rows, ("extra", "tumor", "validation")],
            ValueError,
            r"line 12: slide 'extra' has split "
            r"'validation', which is not one of train, val, test",
        ),
        (lambda rows: [*rows, ("extra", "", "train")], ValueError, r"line 12: has an empty label"),
        (lambda rows: [*rows, ("extra", "tumor")], ValueError, r"line 12: has 2 fields under a header of 3"),
        (
            lambda rows: [r for r in rows if r[2] != "test"],
            ValueError,
            r"lists no slides for split 'test' .*set the "
            r"split column of some rows to test",
        ),
        (
            lambda rows: [r for r in rows if r[2] != "train" or r[1] == "tumor"],
            ValueError,
            r"the training split holds "
            r"only class 'tumor' \(3 slides\); a classifier cannot learn from one class",
        ),
        (
            lambda rows: [*rows[:-1], ("normal_005", "necrosis", "test")],
            ValueError,
            r"line 11: test slide "
            r"'normal_005' has label 'necrosis', which no training slide has",
        ),
    ],
    ids=["duplicate", "unknown-split", "empty-label", "short-row", "empty-split", "one-class", "unseen-label"],
)
def test_a_bad_csv_is_named_with_its_line_and_fix(root, written, change, error, message):
    rewrite(root, change(csv_rows()))
    with pytest.raises(error, match=rf"slides\.csv.*{message}"):
        FeatureBagDataModule(root).setup("fit")


def test_missing_root_csv_and_columns_are_named(root, written, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"root .*nowhere does not exist.*(?s:.*)slide_id,label,split"):
        FeatureBagDataModule(tmp_path / "nowhere").setup("fit")
    # a relative root: the absolute path it resolves to, the working folder, and the CLI argument beside Python's
    monkeypatch.chdir(root / "features")
    absolute = re.escape(os.fspath((root / "features" / "data" / "wsi").resolve()))
    pattern = rf"root {absolute} does not exist \(root='data/wsi', relative to the working folder .*features\)\. "
    pattern += r"Pass the data folder as root=path/to/slides \(--data\.init_args\.root=path/to/slides on the command"
    with pytest.raises(FileNotFoundError, match=pattern):
        FeatureBagDataModule("data/wsi").setup("fit")
    with pytest.raises(FileNotFoundError, match=r"root .*tumor_001\.pt is not a folder \(root='tumor_001\.pt',"):
        FeatureBagDataModule("tumor_001.pt").setup("fit")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"slides CSV .*other.csv does not exist \(argument csv\)"):
        FeatureBagDataModule(root, csv="other.csv").setup("fit")
    rewrite(root, csv_rows(), header=("slide", "label", "split"))
    with pytest.raises(ValueError, match=r"has columns \['slide', 'label', 'split'\], without \['slide_id'\]"):
        FeatureBagDataModule(root).setup("fit")
    (root / "slides.csv").write_text("")
    with pytest.raises(ValueError, match=r"has columns \[\], without \['slide_id', 'label', 'split'\]"):
        FeatureBagDataModule(root).setup("fit")
    rewrite(root, [(s, "-1" if s == "normal_004" else "0", split) for s, _, split in csv_rows()])
    with pytest.raises(ValueError, match=r"line 9: slide 'normal_004' has label -1; integer labels are class ids"):
        FeatureBagDataModule(root).setup("fit")


def test_missing_features_files_are_counted_and_the_first_named(root, written):
    gone = [row[0] for row in SLIDES[:7]]
    for slide_id in gone:
        (root / "features" / f"{slide_id}.pt").unlink()
    pattern = r"7 of the 10 slides listed in .*slides.csv have no features file in .*features \(looked for "
    pattern += r"<slide_id>.pt, then <slide_id>.h5\): 'tumor_001' \(line 2\), .*'tumor_003' \(line 6\), \.\.\."
    with pytest.raises(FileNotFoundError, match=pattern):
        FeatureBagDataModule(root).setup("fit")
    pattern = r"features folder .*features_x does not exist \(root / features_dir='features_x'\), so none of the 10 "
    pattern += r"slides listed in .*slides\.csv has a features file\. Pass the folder of the features files, relative "
    pattern += r"to root, as features_dir=\.\.\. \(--data\.init_args\.features_dir=\.\.\. on the command line\)"
    with pytest.raises(FileNotFoundError, match=pattern):
        FeatureBagDataModule(root, features_dir="features_x").setup("fit")


def test_a_missing_features_dir_suggests_clams_pt_files_or_h5_files_beside_it(root):
    write_slides(root, features_dir="pt_files")  # CLAM's output, read with the default features_dir="features"
    pt = r'pass features_dir="pt_files" \(--data\.init_args\.features_dir=pt_files\)'
    with pytest.raises(
        FileNotFoundError, match=rf"features folder .*wsi/features does not exist .*holds pt_files/, .*{pt}"
    ):
        FeatureBagDataModule(root).setup("fit")
    (root / "h5_files").mkdir()
    h5 = r'features_dir="h5_files" \(--data\.init_args\.features_dir=h5_files\) \(\.h5 files need h5py\)'
    with pytest.raises(FileNotFoundError, match=rf"holds pt_files/ and h5_files/, .*{pt} or {h5}\."):
        FeatureBagDataModule(root).setup("fit")
    # beside a nested features_dir, and beside an existing but empty one (every slide missing)
    (root / "h5_files").rmdir()
    shutil.move(root / "pt_files", root / "clam" / "pt_files")
    nested = (
        r'holds clam/pt_files/, .*pass features_dir="clam/pt_files" \(--data\.init_args\.features_dir=clam/pt_files'
    )
    with pytest.raises(FileNotFoundError, match=nested):
        FeatureBagDataModule(root, features_dir="clam/features").setup("fit")
    (root / "clam" / "features").mkdir()
    with pytest.raises(
        FileNotFoundError, match=rf"10 of the 10 slides .*or remove their rows from the CSV\. .*{nested}"
    ):
        FeatureBagDataModule(root, features_dir="clam/features").setup("fit")
    (root / "clam" / "features" / "tumor_001.pt").write_bytes(b"")  # one slide found: a partial extraction, no hint
    with pytest.raises(FileNotFoundError, match=r"9 of the 10 slides (?s:(?!pt_files/).)*$"):
        FeatureBagDataModule(root, features_dir="clam/features").setup("fit")


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "outside-features"])
def test_a_slide_id_leading_outside_the_root_is_refused(root, written, tmp_path, kind):
    outside = tmp_path / "secret"
    torch.save(torch.ones(2, DIM), tmp_path / "secret.pt")
    torch.save(torch.ones(2, DIM), root / "loose.pt")  # inside the root, outside features/
    slide_id = {
        "dotdot": "../../secret",
        "absolute": os.fspath(outside),
        "symlink": "linked",
        "outside-features": "../loose",
    }[kind]
    if kind == "symlink":
        (root / "features" / "linked.pt").symlink_to(tmp_path / "secret.pt")
    rewrite(root, [*csv_rows(), (slide_id, "tumor", "train")])
    pattern = rf"slides\.csv, line 12 \(slide {re.escape(repr(slide_id))}\): the entry .* leads outside the data root"
    with pytest.raises(ValueError, match=pattern):
        FeatureBagDataModule(root).setup("fit")


def test_bad_arguments_are_refused(root):
    with pytest.raises(ValueError, match="check_files must be 'digest' or 'size'"):
        FeatureBagDataModule(root, check_files="mtime")
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        FeatureBagDataModule(root, num_classes=1)
    with pytest.raises(ValueError, match="batch_size and eval_batch_size must be at least 1"):
        FeatureBagDataModule(root, batch_size=0)


# refusals when a file is read -------------------------------------------------------------------------------------


class NotAllowed:  # a pickled object that torch.load(weights_only=True) must refuse
    pass


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (torch.zeros(2, 3, DIM), r"features of shape \(2, 3, 4\) and dtype torch.float32: .*float tensor \(N, D\)"),
        (torch.zeros(3, DIM, dtype=torch.int64), r"shape \(3, 4\) and dtype torch.int64"),
        (torch.zeros(0, DIM), r"holds no patches \(N = 0\)"),
        (torch.zeros(3, DIM + 1), r"width D=5, but the other slides' are 4 wide \(read from .*tumor_001.pt\)"),
        (
            torch.tensor([[0.0] * DIM, [0.0, float("nan"), float("inf"), 0.0]]),
            r"2 of its 8 feature values are not "
            r"finite \(NaN or inf\), the first in patch row 1",
        ),
        ({"coords": torch.zeros(3, 2)}, r"holds a dict with keys \['coords'\] but no 'features' tensor"),
        ([1, 2, 3], r"holds a list, not a float tensor \(N, D\)"),
        (b"not a zip file", r"cannot be read as a features file .*weights_only=True"),
        (NotAllowed(), r"cannot be read as a features file \(UnpicklingError: .*refuses other pickled objects"),
    ],
    ids=["3d", "int", "empty", "width", "nonfinite", "no-features", "list", "garbage", "pickled-object"],
)
def test_a_bad_features_file_is_named_when_it_is_read(root, written, content, message):
    path = root / "features" / "normal_004.pt"  # a validation slide: setup does not read it
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    dm = FeatureBagDataModule(root)
    dm.setup("fit")
    bag = dm.datasets["val"][0]  # the other validation slide still loads
    assert bag[IMAGE].shape == (3, DIM)
    with pytest.raises(ValueError, match=rf"{re.escape(os.fspath(path))}.*{message}"):
        dm.datasets["val"][1]
    with pytest.raises(ValueError, match=re.escape(os.fspath(path))):
        list(dm.val_dataloader())


def test_the_first_training_slide_is_read_at_setup(root, written):
    torch.save(torch.zeros(0, DIM), root / "features" / "tumor_001.pt")
    with pytest.raises(ValueError, match=r"tumor_001.pt holds no patches"):
        FeatureBagDataModule(root).setup("fit")


# training and resume ----------------------------------------------------------------------------------------------


class MeanPoolMIL(LightningModule):
    """Mean of a bag's real instances (``instance_mask``), then a linear classifier."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.head = torch.nn.Linear(dim, num_classes)
        self.masks: list[torch.Tensor] = []

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(image.dtype)
        return self.head((image * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1))

    def training_step(self, batch, batch_idx):
        self.masks.append(batch[INSTANCE_MASK])
        logits = self(batch[IMAGE], batch[INSTANCE_MASK])
        loss = F.cross_entropy(logits, batch[TARGET])
        return {"loss": loss, "logits": logits.detach()}

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", F.cross_entropy(self(batch[IMAGE], batch[INSTANCE_MASK]), batch[TARGET]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(root: Path, tmp_path: Path, epochs: int, ckpt_path: Path | None = None, **data) -> MeanPoolMIL:
    dm = FeatureBagDataModule(root, batch_size=2, eval_batch_size=2, **data)
    model = MeanPoolMIL(DIM, 2)
    trainer = Trainer(max_epochs=epochs, default_root_dir=tmp_path, **{**QUIET, "enable_checkpointing": True})
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model


def test_a_trainer_fits_an_epoch_of_padded_bags(root, written, tmp_path):
    before = MeanPoolMIL(DIM, 2)
    model = fit(root, tmp_path / "run", epochs=1)
    assert len(model.masks) == math.ceil(6 / 2) and any(not mask.all() for mask in model.masks)  # some bags padded
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # the model reads instance_mask: a bag gives the same logits alone and padded beside a longer one
    dm = FeatureBagDataModule(root, eval_batch_size=2)
    batch = next(iter(dm.val_dataloader()))
    alone = dm.datasets["val"][1][IMAGE][None]
    torch.testing.assert_close(
        before(batch[IMAGE], batch[INSTANCE_MASK])[1], before(alone, torch.ones(1, alone.shape[1], dtype=torch.bool))[0]
    )


def test_resuming_on_replaced_features_is_a_named_error(root, written, tmp_path):
    fit(root, tmp_path / "run", epochs=1)
    checkpoint = next((tmp_path / "run").rglob("*.ckpt"))
    saved = torch.load(checkpoint, weights_only=True)["FeatureBagDataModule"]
    assert saved["classes"] == ["normal", "tumor"] and len(saved["file_digests"]) == 10
    torch.save(slide_features(99, 3), root / "features" / "tumor_004.pt")  # same shape and size, other values
    with pytest.raises(
        ValueError,
        match=r"not the data the checkpoint was made on: the features file of 1 slide "
        r"changed since \(e\.g\. 'tumor_004'\)",
    ):
        fit(root, tmp_path / "run", epochs=2, ckpt_path=checkpoint)
    torch.save(written["tumor_004"], root / "features" / "tumor_004.pt")  # the original features again
    fit(root, tmp_path / "run", epochs=2, ckpt_path=checkpoint)


def test_a_state_from_other_data_is_refused_set_up_or_not(root, written):
    original = FeatureBagDataModule(root)
    original.setup("fit")
    state = original.state_dict()
    torch.save(slide_features(99, 2), root / "features" / "normal_004.pt")
    for set_up in (True, False):
        replaced = FeatureBagDataModule(root)
        if set_up:
            replaced.setup("fit")
        with pytest.raises(ValueError, match=r"features file of 1 slide changed since \(e\.g\. 'normal_004'\)"):
            replaced.load_state_dict(state)
    # check_files="size" compares sizes only: the same-shaped replacement passes, a larger one does not
    sized = FeatureBagDataModule(root, check_files="size")
    sized.setup("fit")
    sized_state = sized.state_dict()
    assert sized_state["file_digests"] == {}
    FeatureBagDataModule(root, check_files="size").load_state_dict(sized_state)
    torch.save(slide_features(99, 5), root / "features" / "normal_004.pt")
    with pytest.raises(ValueError, match=r"features file of 1 slide changed"):
        FeatureBagDataModule(root, check_files="size").load_state_dict(sized_state)


def test_relabelled_slides_and_renamed_classes_are_refused(root, written):
    original = FeatureBagDataModule(root)
    original.setup("fit")
    state = original.state_dict()
    swapped = [(s, "normal" if s == "tumor_004" else label, split) for s, label, split in csv_rows()]
    rewrite(root, swapped)
    with pytest.raises(
        ValueError, match=r"not the data the checkpoint was made on \(the val split changed: the labels differ"
    ):
        FeatureBagDataModule(root).load_state_dict(state)
    renamed = [(s, "benign" if label == "normal" else label, split) for s, label, split in csv_rows()]
    rewrite(root, renamed)  # the same class ids, but id 0 now means another class
    with pytest.raises(
        ValueError,
        match=r"the checkpoint's classes are \['normal', 'tumor'\], the training split's "
        r"now \['benign', 'tumor'\]",
    ):
        FeatureBagDataModule(root).load_state_dict(state)
    rewrite(root, csv_rows())
    same = FeatureBagDataModule(root)
    same.setup("fit")
    same.load_state_dict(state)  # the original data: accepted


# class order ------------------------------------------------------------------------------------------------------

# The labels that sort the wrong way round: "cancer" < "normal", so sorted ids would make cancer class 0, the class
# MILClassifier treats as negative.
CANCER = [(s.replace("tumor", "cancer"), label.replace("tumor", "cancer"), split, n) for s, label, split, n in SLIDES]


@pytest.fixture
def logged(monkeypatch) -> list[str]:
    """What FeatureBagDataModule logs with rank_zero_info (Lightning's logger does not propagate to caplog)."""
    messages: list[str] = []
    monkeypatch.setattr("lightning_regs.datamodules.feature_bags.rank_zero_info", messages.append)
    return messages


def test_classes_sets_the_ids_order_and_sorted_order_is_logged_once(root, logged):
    written = write_slides(root, CANCER)
    dm = FeatureBagDataModule(root, classes=["normal", "cancer"], eval_batch_size=2)
    assert dm.num_classes == 2  # known before setup: classes lists exactly the training split's labels
    dm.setup("fit")
    assert dm.classes == ("normal", "cancer") and dm.num_classes == 2
    for split in ("train", "val", "test"):
        assert_split_is(dm, split, written, CANCER)
    assert next(iter(dm.val_dataloader()))[TARGET].tolist() == [1, 0]  # cancer_004, normal_004: cancer is class 1
    assert logged == []  # the order was chosen: nothing to say
    assert dm.hparams.classes == ["normal", "cancer"]
    # without classes: sorted, and the mapping is logged once, even when set up again (as on resume)
    dm = FeatureBagDataModule(root)
    dm.setup("fit")
    assert dm.classes == ("cancer", "normal")
    state = dm.state_dict()
    dm.datasets = {}
    dm.load_state_dict(state)  # not set up: sets up again, same classes
    assert dm.datasets and dm.classes == ("cancer", "normal")
    assert logged == [
        "FeatureBagDataModule: classes 0 = 'cancer', 1 = 'normal' (sorted; pass classes=[...] to choose the order, "
        "--data.init_args.classes=[...] on the command line; MILClassifier treats class 0 as the negative class)"
    ]
    # integer labels are not logged: their ids are their own
    write_slides(root, [(s, "1" if "cancer" in label else "0", split, n) for s, label, split, n in CANCER])
    FeatureBagDataModule(root).setup("fit")
    assert len(logged) == 1


def test_classes_refuses_labels_it_does_not_list_untrained_classes_and_integer_labels(root):
    write_slides(root, CANCER)
    pattern = r"slides\.csv, line 2: train slide 'cancer_001' has label 'cancer', which is not in classes=\['normal', "
    pattern += r"'Cancer'\] \(labels not in it: \['cancer'\], on 5 slides\)\. Fix the label, or add the class"
    with pytest.raises(ValueError, match=pattern):
        FeatureBagDataModule(root, classes=["normal", "Cancer"]).setup("fit")
    rewrite(root, [(s, "necrosis" if s == "normal_005" else label, split) for s, label, split, _ in CANCER])
    with pytest.raises(ValueError, match=r"line 11: test slide 'normal_005' has label 'necrosis', which is not in"):
        FeatureBagDataModule(root, classes=["normal", "cancer"]).setup("fit")
    # a class no training slide has is refused, as without classes (a val/test-only label is): every class is learnt
    pattern = (
        r"classes=\['normal', 'cancer', 'necrosis'\] lists \['necrosis'\], which no training slide of .*slides\.csv "
    )
    pattern += r"has \(its labels: \['cancer', 'normal'\]\)\. The classes are the training split's labels"
    with pytest.raises(ValueError, match=pattern):
        FeatureBagDataModule(root, classes=["normal", "cancer", "necrosis"]).setup("fit")
    rewrite(root, [(s, "1" if "cancer" in label else "0", split) for s, label, split, _ in CANCER])
    with pytest.raises(ValueError, match=r"classes=\['1', '0'\] was given, but every label in .*slides\.csv is an "):
        FeatureBagDataModule(root, classes=["1", "0"]).setup("fit")


def test_classes_from_the_command_line(root, monkeypatch):
    from lightning_regs.cli import LightningRegsCLI

    monkeypatch.setattr(sys, "argv", ["lightning-regs"])
    write_slides(root, CANCER)
    config = Path(__file__).resolve().parents[1] / "examples" / "aem_feature_bags.yaml"
    cli = LightningRegsCLI(
        args=["--config", os.fspath(config), f"--data.init_args.root={root}",
              "--data.init_args.classes=[normal,cancer]", "--trainer.logger=false"],
        run=False,
    )  # fmt: skip
    assert isinstance(cli.datamodule, FeatureBagDataModule) and cli.datamodule.hparams.classes == ["normal", "cancer"]
    cli.datamodule.setup("fit")
    assert cli.datamodule.classes == ("normal", "cancer")


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ("normal,cancer", r"classes must be a list of the class names, e\.g\. classes=\['normal', 'cancer'\]"),
        (["normal"], r"classes must list at least 2 classes"),
        (["normal", "cancer", "normal"], r"classes lists \['normal'\] more than once"),
        (["normal", " cancer"], r"no surrounding spaces\), .*with \[' cancer'\]"),
        ([0, 1], r"non-empty strings.*with \[0, 1\]\. Integer labels are class ids already"),
        (["a", "b", "c"], r"classes lists 3 classes \(\['a', 'b', 'c'\]\) but num_classes=2"),
    ],
    ids=["string", "one", "repeated", "spaces", "integers", "num-classes"],
)
def test_a_bad_classes_argument_is_refused_at_construction(root, classes, message):
    with pytest.raises(ValueError, match=message):
        FeatureBagDataModule(root, classes=classes, num_classes=2 if len(classes) == 3 else None)


def test_resuming_with_the_classes_in_another_order_is_refused(root, tmp_path):
    write_slides(root, CANCER)
    fit(root, tmp_path / "run", epochs=1, classes=["normal", "cancer"])
    checkpoint = next((tmp_path / "run").rglob("*.ckpt"))
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["FeatureBagDataModule"]["classes"] == ["normal", "cancer"]
    assert saved["datamodule_hyper_parameters"]["classes"] == ["normal", "cancer"]
    pattern = r"the checkpoint was made with the same classes in another order: class ids 0 = 'normal', 1 = 'cancer' "
    pattern += r"then, 0 = 'cancer', 1 = 'normal' now \(classes=None\), .*Pass classes=\['normal', 'cancer'\] "
    pattern += r"\(--data\.init_args\.classes=\[normal,cancer\]\) to resume"
    with pytest.raises(ValueError, match=pattern):
        fit(root, tmp_path / "run", epochs=2, ckpt_path=checkpoint)  # sorted: cancer would become class 0
    fit(root, tmp_path / "run", epochs=2, ckpt_path=checkpoint, classes=["normal", "cancer"])
    # a state of sorted order: refused by the other order, set up or not; accepted by the same order given explicitly
    sorted_dm = FeatureBagDataModule(root)
    sorted_dm.setup("fit")
    state = sorted_dm.state_dict()
    for set_up in (True, False):
        other = FeatureBagDataModule(root, classes=["normal", "cancer"])
        if set_up:
            other.setup("fit")
        with pytest.raises(
            ValueError, match=r"\(classes=\['normal', 'cancer'\]\).*Pass classes=\['cancer', 'normal'\]"
        ):
            other.load_state_dict(state)
    FeatureBagDataModule(root, classes=["cancer", "normal"]).load_state_dict(state)


# published splits (CLAM's splits/<task>/splits_<k>.csv) ---------------------------------------------------------

# Fold 0 is the split column of SLIDES; fold 1 moves every slide and lists each split in an order of its own.
FOLD_0 = {split: [row[0] for row in SLIDES if row[2] == split] for split in ("train", "val", "test")}
FOLD_1 = {
    "train": ["normal_005", "tumor_003", "normal_003", "tumor_004", "normal_004", "tumor_005"],
    "val": ["tumor_001", "normal_001"],
    "test": ["normal_002", "tumor_002"],
}
# Fold 2 leaves normal_005 out, and its middle column is the shortest.
FOLD_2 = {
    "train": ["tumor_001", "normal_001", "tumor_002", "normal_002"],
    "val": ["tumor_003"],
    "test": ["normal_003", "tumor_004", "normal_004", "tumor_005"],
}
# FOLD_2 as pandas writes it (CLAM's save_splits: pd.concat of the three slide_id columns, then to_csv): the header
# ",train,val,test", an index column, empty cells padding the shorter columns, "\n" line ends; the published
# splits/task_1_tumor_vs_normal_75/splits_0.csv of mahmoodlab/CLAM ends the same way ("51,slide_186,,").
FOLD_2_TEXT = """,train,val,test
0,tumor_001,tumor_003,normal_003
1,normal_001,,tumor_004
2,tumor_002,,normal_004
3,normal_002,,tumor_005
"""
SPLITS_0 = "splits/task_1_tumor_vs_normal_100/splits_0.csv"  # relative to root, as CLAM's repository lays them out
SPLITS_1 = "splits/task_1_tumor_vs_normal_100/splits_1.csv"


def write_splits(path: Path, fold: dict[str, list[str]]) -> Path:
    """Write ``fold`` as CLAM's ``splits_<k>.csv``, by hand with the csv module, byte for byte as pandas would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    length = max(len(ids) for ids in fold.values())
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["", *fold])
        for index in range(length):
            writer.writerow([index, *(ids[index] if index < len(ids) else "" for ids in fold.values())])
    return path


def slides_of(fold: dict[str, list[str]]) -> list[tuple[str, str, str, int]]:
    """SLIDES (in the CSV's order) with each slide's split from ``fold``; slides of no split left out."""
    split_of = {slide_id: split for split, ids in fold.items() for slide_id in ids}
    return [(s, label, split_of[s], n) for s, label, _, n in SLIDES if s in split_of]


def clam_csv(root: Path, slides=SLIDES) -> None:
    """The slides CSV as CLAM's dataset_csv/ holds it: case_id,slide_id,label, no split column."""
    rows = [(f"patient_{s[-3:]}", s, label) for s, label, _, _ in slides]
    write_csv(root / "slides.csv", rows, header=("case_id", "slide_id", "label"))


def test_the_hand_written_splits_file_is_what_pandas_writes(tmp_path):
    assert write_splits(tmp_path / "splits_2.csv", FOLD_2).read_text() == FOLD_2_TEXT
    pd = pytest.importorskip("pandas")  # not a dependency: where it is installed, compare with pandas itself
    frame = pd.concat([pd.Series(ids) for ids in FOLD_2.values()], ignore_index=True, axis=1)
    frame.columns = list(FOLD_2)
    frame.to_csv(tmp_path / "pandas.csv")
    assert (tmp_path / "pandas.csv").read_text() == FOLD_2_TEXT


def test_the_splits_file_decides_the_splits_and_the_split_column_is_not_read(root, written):
    # slides.csv (from write_slides) has the split column of fold 0: the splits file of fold 1 wins
    write_splits(root / SPLITS_1, FOLD_1)
    dm = FeatureBagDataModule(root, splits=SPLITS_1, eval_batch_size=2)
    dm.setup("fit")
    slides = slides_of(FOLD_1)
    assert [len(dm.datasets[split]) for split in ("train", "val", "test")] == [6, 2, 2]
    assert dm.datasets["train"].slide_ids[:2] == ["tumor_003", "normal_003"]  # the CSV's order, not the file's
    for split in ("train", "val", "test"):
        assert_split_is(dm, split, written, slides)
    assert dm.splits_path == root / SPLITS_1 and dm.classes == ("normal", "tumor")
    # a split column with values the CSV mode refuses is not read either
    rewrite(root, [(s, label, "validation") for s, label, _ in csv_rows()])
    again = FeatureBagDataModule(root, splits=SPLITS_1)
    again.setup("fit")
    assert again.datasets["val"].slide_ids == ["tumor_001", "normal_001"]


def test_clam_csv_without_a_split_column_and_slides_of_no_split_left_out_quietly(root, written, tmp_path):
    clam_csv(root, [*SLIDES, ("tumor_999", "tumor", "", 0)])  # tumor_999 has no features file and no split
    (root / "features" / "normal_005.pt").unlink()  # normal_005 is in no split of fold 2: not needed either
    splits = write_splits(tmp_path / "elsewhere" / "splits_2.csv", FOLD_2)  # absolute, outside root
    dm = FeatureBagDataModule(root, splits=splits, eval_batch_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # leaving slides out is documented, not warned about
        dm.setup("fit")
    for split in ("train", "val", "test"):
        assert_split_is(dm, split, written, slides_of(FOLD_2))
    assert "normal_005" not in dm.state_dict()["file_sizes"]
    assert dm.hparams.splits == os.fspath(splits)  # stored as a string: loads with weights_only
    # without splits, the CSV needs its split column; the error says CLAM's folds can give the splits
    pattern = r"slides\.csv has columns \['case_id', 'slide_id', 'label'\], without \['split'\]; expected "
    pattern += r"slide_id,label,split\. .*CLAM's published folds can be given with splits=path/to/splits_<k>\.csv "
    pattern += r"\(--data\.init_args\.splits=path/to/splits_<k>\.csv; .*the CSV needs only slide_id,label\."
    with pytest.raises(ValueError, match=pattern):
        FeatureBagDataModule(root).setup("fit")


def test_with_splits_the_csv_still_needs_slide_id_and_label(root, written):
    write_splits(root / SPLITS_0, FOLD_0)
    write_csv(root / "slides.csv", [(s, split) for s, _, split in csv_rows()], header=("slide_id", "split"))
    with pytest.raises(ValueError, match=r"without \['label'\]; expected slide_id,label \(splits gives the splits"):
        FeatureBagDataModule(root, splits=SPLITS_0).setup("fit")


def with_row(text: str, row: str) -> str:
    return text + row + "\n"


@pytest.mark.parametrize(
    ("name", "text", "error", "message"),
    [
        (
            "splits_0.csv",
            ",train,validation,test\n0,tumor_001,tumor_004,tumor_005\n",
            ValueError,
            r"splits_0\.csv has columns \['', 'train', 'validation', 'test'\], without \['val'\]\. A splits file is "
            r"CLAM's splits/<task>/splits_<k>\.csv .*header ',train,val,test'",
        ),
        (
            "splits_0_bool.csv",
            ",train,val,test\ntumor_001,True,False,False\ntumor_004,False,True,False\n",
            ValueError,
            r"splits_0_bool\.csv, line 2: holds True/False/False under train,val,test: this is CLAM's "
            r"splits_<k>_bool\.csv .*which is not read\. Pass the splits_<k>\.csv beside it \(.*/splits_0\.csv\)",
        ),
        (
            "splits_0.csv",
            with_row(FOLD_2_TEXT, "4,normal_005,,tumor_001"),
            ValueError,
            r"splits_0\.csv, line 6, column test: slide 'tumor_001' is listed again \(first at line 2, column "
            r"train\)\. A slide in two splits leaks its label across them\. .*remove the repeated entry",
        ),
        (
            "splits_0.csv",
            with_row(FOLD_2_TEXT, "4,tumor_002,,"),
            ValueError,
            r"splits_0\.csv, line 6, column train: slide 'tumor_002' is listed again \(first at line 4, column "
            r"train\)\. Each slide belongs to one split",
        ),
        (
            "splits_0.csv",
            with_row(FOLD_2_TEXT, "4,,,tumor_999"),
            ValueError,
            r"1 of the 10 slides listed in .*splits_0\.csv are not in the slides CSV .*slides\.csv, which gives every "
            r"slide's label: 'tumor_999' \(line 6, test\)\. Add their rows \(slide_id,label\) to the CSV",
        ),
        (
            "splits_0.csv",
            ",train,val,test\n0,tumor_001,tumor_004,\n1,normal_001,,\n",
            ValueError,
            r"splits_0\.csv lists no slides for split 'test' \(slides per split: train 2, val 1, test 0\)\. Every "
            r"split needs at least one slide: list slide ids in its test column",
        ),
        (
            "splits_0.csv",
            ",train,val,test\n0,tumor_001,normal_001,tumor_005\n1,tumor_002,,\n",
            ValueError,
            r"splits_0\.csv: the training split holds only class 'tumor' \(2 slides, labels from .*slides\.csv\); a "
            r"classifier cannot learn from one class\. Move slides of the other classes to the training split \(its "
            r"train column",
        ),
        (
            "splits_0.csv",
            ",train,val,test\n0,tumor_001,tumor_004,tumor_005\n1,normal_001,,\n2,normal_002\n",
            ValueError,
            r"splits_0\.csv, line 4: has 2 fields under a header of 4 \(,train,val,test\)",
        ),
    ],
    ids=[
        "no-val-column",
        "bool-file",
        "in-two-splits",
        "twice-in-one",
        "not-in-csv",
        "empty-split",
        "one-class",
        "short-row",
    ],
)
def test_a_bad_splits_file_is_named_with_its_line_slide_and_fix(root, written, name, text, error, message):
    path = root / "splits" / name
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(error, match=message):
        FeatureBagDataModule(root, splits=f"splits/{name}").setup("fit")


def test_the_other_checks_name_the_splits_file(root, written):
    write_splits(root / SPLITS_0, FOLD_2)
    with pytest.raises(FileNotFoundError, match=r"splits file .*splits_9\.csv does not exist \(argument splits"):
        FeatureBagDataModule(root, splits="splits/splits_9.csv").setup("fit")
    (root / "features" / "tumor_003.pt").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"1 of the 9 slides listed in .*splits_0\.csv \(lines of slides\.csv\) have no features file .*"
        r"'tumor_003' \(line 6\)\. Extract their features, fix features_dir, or remove them from the splits file",
    ):
        FeatureBagDataModule(root, splits=SPLITS_0).setup("fit")
    torch.save(written["tumor_003"], root / "features" / "tumor_003.pt")
    rewrite(root, [(s, "necrosis" if s == "tumor_003" else label, split) for s, label, split in csv_rows()])
    with pytest.raises(ValueError, match=r"slides\.csv, line 6: val slide 'tumor_003' has label 'necrosis', which no"):
        FeatureBagDataModule(root, splits=SPLITS_0).setup("fit")
    rewrite(root, csv_rows())
    with pytest.raises(ValueError, match=r"the training split of .*splits_0\.csv holds 2 classes but num_classes=3"):
        FeatureBagDataModule(root, splits=SPLITS_0, num_classes=3).setup("fit")


def test_resuming_with_another_folds_splits_file_is_a_named_error(root, written, tmp_path):
    write_splits(root / SPLITS_0, FOLD_0)
    write_splits(root / SPLITS_1, FOLD_1)
    fit(root, tmp_path / "run", epochs=1, splits=SPLITS_0)
    checkpoint = next((tmp_path / "run").rglob("*.ckpt"))
    saved = torch.load(checkpoint, weights_only=True)["FeatureBagDataModule"]
    assert saved["splits"] == SPLITS_0 and saved["slide_splits"]["tumor_004"] == "val"
    pattern = (
        r"not split as when the checkpoint was made: 8 slides are in another split \(e\.g\. 'tumor_001' \(train "
        r"then, val now\), .*\)\. The checkpoint's split came from splits='splits/task_1_tumor_vs_normal_100/"
        r"splits_0\.csv', this module's from splits='splits/task_1_tumor_vs_normal_100/splits_1\.csv'\. .*Resume "
        r"with the checkpoint's splits \(the same fold's file\)"
    )
    with pytest.raises(ValueError, match=pattern):
        fit(root, tmp_path / "run", epochs=2, ckpt_path=checkpoint, splits=SPLITS_1)
    # the same fold from a moved file, or from the CSV's split column (fold 0 is the CSV's), resumes
    moved = shutil.copy(root / SPLITS_0, tmp_path / "fold_0.csv")
    fit(root, tmp_path / "run", epochs=2, ckpt_path=checkpoint, splits=moved)
    fit(root, tmp_path / "run", epochs=2, ckpt_path=checkpoint)


def test_a_state_of_another_split_is_refused_set_up_or_not(root, written):
    write_splits(root / SPLITS_1, FOLD_1)
    write_splits(root / SPLITS_0, FOLD_2)  # fold 2 leaves normal_005 out
    column = FeatureBagDataModule(root)
    column.setup("fit")
    state = column.state_dict()
    for set_up in (True, False):
        other = FeatureBagDataModule(root, splits=SPLITS_1)
        if set_up:
            other.setup("fit")
        with pytest.raises(
            ValueError, match=r"The checkpoint's split came from the CSV's split column, this module's "
        ):
            other.load_state_dict(state)
    fewer = FeatureBagDataModule(root, splits=SPLITS_0)
    with pytest.raises(ValueError, match=r"'normal_005' \(test then, in no split now\)"):
        fewer.load_state_dict(state)
    # the CSV's split column edited since the checkpoint: refused without any splits file too
    rewrite(root, [(s, label, "train" if s == "tumor_004" else split) for s, label, split in csv_rows()])
    with pytest.raises(ValueError, match=r"1 slide is in another split \(e\.g\. 'tumor_004' \(val then, train now\)\)"):
        FeatureBagDataModule(root).load_state_dict(state)
