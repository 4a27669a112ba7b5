import json
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from lightning.pytorch import Callback, Trainer

from lightning_regs.cli import LightningRegsCLI
from lightning_regs.datamodules import radimagenet
from lightning_regs.datamodules.radimagenet import RadImageNetDataModule
from lightning_regs.models import SmallCNN
from lightning_regs.tasks import ImageClassifier
from tests.helpers.ddp import DDP_SPAWN_CPU
from tests.helpers.fake_datasets_medical import make_radimagenet
from tests.helpers.trainers import QUIET

ROOT = Path(__file__).resolve().parents[1]
RAW = {"image_size": None, "augment": False, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "batch_size": 4}


def everything(loader):
    batches = list(loader)
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def assert_split_is(dm, split, rows, ids):
    """Index i of the split is CSV row i; its target and pixel id are those written for it."""
    loaded = everything(dm.train_dataloader() if split == "train" else getattr(dm, f"{split}_dataloader")())
    order = loaded["index"].argsort()
    assert loaded["index"][order].tolist() == list(range(len(rows)))
    mapping = dm.class_to_idx
    assert loaded["target"][order].tolist() == [mapping[label] for _, label in rows]
    pixel_ids = (loaded["image"][order, 0, 0, 0] * 255).round().long().tolist()
    assert pixel_ids == [ids[filename] for filename, _ in rows]


@pytest.fixture
def clean(tmp_path):
    return make_radimagenet(tmp_path / "rin")


@pytest.fixture
def defective(tmp_path):
    return make_radimagenet(tmp_path / "rin", defects=True)


def test_csv_mode_lengths_classes_targets_and_pixels_are_what_was_written(clean):
    dm = RadImageNetDataModule(clean["root"], **RAW)
    dm.setup("fit")
    assert list(dm.class_names) == clean["classes"] == ["CT/abd/cyst", "CT/abd/normal", "MR/knee/acl", "US/ovary"]
    assert dm.num_classes == 4 and dm.class_to_idx["US/ovary"] == 3
    for split in ("train", "val", "test"):
        assert len(dm.datasets[split]) == len(clean["rows"][split]) == {"train": 12}.get(split, 4)
        assert_split_is(dm, split, clean["rows"][split], clean["ids"])
    assert dm.report == {
        "checked": 20,
        "missing": [],
        "unreadable": [],
        "blank": [],
        "duplicates": [],
        "listed_twice": [],
    }


def test_image_size_augment_and_channels(clean):
    dm = RadImageNetDataModule(clean["root"], image_size=16, batch_size=4, channels=1, mean=(0.5,), std=(0.5,))
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 16, 16) and batch["image"].dtype == torch.float32
    assert next(iter(dm.test_dataloader()))["image"].shape == (4, 1, 16, 16)


def test_the_report_names_missing_unreadable_blank_and_duplicate_images(defective):
    with pytest.warns(UserWarning, match=r"(?s)missing: 1.*unreadable: 1.*blank: 1.*duplicates: 1"):
        dm = RadImageNetDataModule(defective["root"], **RAW)
        dm.setup("fit")
    report = dm.report
    assert report["missing"] == [defective["missing"]] and report["unreadable"] == [defective["unreadable"]]
    assert report["blank"] == [defective["blank"]] and report["duplicates"] == [list(defective["duplicate"])]
    # warn: missing and unreadable files never reach a worker; blank and duplicate images stay
    rows = {
        split: [r for r in rows if r[0] not in (defective["missing"], defective["unreadable"])]
        for split, rows in defective["rows"].items()
    }
    for split in ("train", "val", "test"):
        assert_split_is(dm, split, rows[split], defective["ids"])


def test_drop_removes_blank_images_and_later_copies_and_raise_raises(defective):
    dm = RadImageNetDataModule(defective["root"], bad_images="drop", **RAW)
    with pytest.warns(UserWarning, match="4 files dropped"):
        dm.setup("fit")
    bad = {defective["missing"], defective["unreadable"], defective["blank"], defective["duplicate"][1]}
    for split in ("train", "val", "test"):
        assert_split_is(dm, split, [r for r in defective["rows"][split] if r[0] not in bad], defective["ids"])
    with pytest.raises(ValueError, match=r"(?s)missing: 1 \(e.g. radiology_ai/CT/abd/normal/gone.png\).*'drop'"):
        RadImageNetDataModule(defective["root"], bad_images="raise", **RAW).setup("fit")


def test_exists_check_is_cheap_and_finds_missing_files_only(defective):
    dm = RadImageNetDataModule(defective["root"], check_images="exists", **RAW)
    with pytest.warns(UserWarning, match="missing: 1"):
        dm.setup("fit")
    assert dm.report["missing"] == [defective["missing"]] and not dm.report["unreadable"]


def coarse(filename: str, level: str) -> str:
    _, modality, anatomy, *_ = filename.split("/")  # radiology_ai/<modality>/<anatomy or US label>/...
    return modality if level == "modality" or modality == "US" else f"{modality}/{anatomy}"


@pytest.mark.parametrize(
    ("level", "classes"),
    [("modality", ["CT", "MR", "US"]), ("anatomy", ["CT/abd", "MR/knee", "US"])],
)
def test_label_levels(clean, level, classes):
    dm = RadImageNetDataModule(clean["root"], label_level=level, **RAW)
    dm.setup("fit")
    assert list(dm.class_names) == classes
    rows = [(f, coarse(f, level)) for f, _ in clean["rows"]["val"]]
    assert_split_is(dm, "val", rows, clean["ids"])


def test_folder_mode_walks_the_tree_with_a_seeded_split_kept_in_state(clean, tmp_path):
    dm = RadImageNetDataModule(clean["root"], mode="folder", val_fraction=0.2, test_fraction=0.2, seed=1, **RAW)
    dm.setup("fit")
    assert list(dm.class_names) == clean["classes"]
    indices = [dm.split_indices[s] for s in ("train", "val", "test")]
    assert sorted(torch.cat(indices).tolist()) == list(range(20)) and [len(i) for i in indices] == [12, 4, 4]
    written = {f: label for rows in clean["rows"].values() for f, label in rows}
    for split in ("train", "val", "test"):
        files = [path.relative_to(clean["root"]).as_posix() for path, _ in dm.datasets[split].items]
        assert_split_is(dm, split, [(f, written[f]) for f in files], clean["ids"])
    torch.save(dm.state_dict(), tmp_path / "state.pt")
    other_seed = RadImageNetDataModule(clean["root"], mode="folder", val_fraction=0.2, test_fraction=0.2, seed=2)
    other_seed.setup("fit")
    assert other_seed.split_indices["val"].tolist() != dm.split_indices["val"].tolist()
    restored = RadImageNetDataModule(clean["root"], mode="folder", val_fraction=0.2, test_fraction=0.2, seed=2)
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert restored.split_indices["val"].tolist() == dm.split_indices["val"].tolist()


def test_class_index_is_saved_and_reused(clean, tmp_path):
    path = tmp_path / "classes.json"
    dm = RadImageNetDataModule(clean["root"], class_index_path=str(path), **RAW)
    dm.setup("fit")
    saved = json.loads(path.read_text())
    assert saved["class_names"] == clean["classes"] and saved["class_to_idx"]["MR/knee/acl"] == 2
    # a larger saved index (e.g. all 165 classes) is reused as is
    path.write_text(json.dumps({"class_names": ["AAA", *clean["classes"]]}))
    reused = RadImageNetDataModule(clean["root"], class_index_path=str(path), **RAW)
    reused.setup("fit")
    assert reused.num_classes == 5 and reused.class_to_idx["CT/abd/cyst"] == 1
    assert_split_is(reused, "train", clean["rows"]["train"], clean["ids"])
    # the checkpoint's mapping wins over the data's
    state = reused.state_dict()
    fresh = RadImageNetDataModule(clean["root"], **RAW)
    fresh.load_state_dict(state)
    assert fresh.class_names == reused.class_names
    path.write_text(json.dumps({"class_names": ["CT/abd/cyst"]}))
    with pytest.raises(ValueError, match="not in the saved class index"):
        RadImageNetDataModule(clean["root"], class_index_path=str(path), **RAW).setup("fit")
    with pytest.raises(ValueError, match="label_level='modality'"):
        RadImageNetDataModule(clean["root"], **RAW).load_state_dict({**state, "label_level": "modality"})


def test_the_class_index_and_report_are_written_to_the_trainer_log_dir(clean, tmp_path):
    dm = RadImageNetDataModule(clean["root"], **RAW)
    dm.trainer = Trainer(default_root_dir=tmp_path / "logs", **QUIET)
    dm.setup("fit")
    assert json.loads((tmp_path / "logs/radimagenet_classes.json").read_text())["class_names"] == clean["classes"]
    assert json.loads((tmp_path / "logs/radimagenet_image_report.json").read_text())["checked"] == 20


def test_the_report_is_written_also_with_a_class_index_path(clean, tmp_path):
    dm = RadImageNetDataModule(clean["root"], class_index_path=str(tmp_path / "index/classes.json"), **RAW)
    dm.trainer = Trainer(default_root_dir=tmp_path / "logs", **QUIET)
    dm.setup("fit")
    assert json.loads((tmp_path / "index/classes.json").read_text())["class_names"] == clean["classes"]
    assert json.loads((tmp_path / "logs/radimagenet_image_report.json").read_text())["checked"] == 20
    assert not (tmp_path / "logs/radimagenet_classes.json").exists()


def test_a_failed_write_leaves_no_temporary_or_partial_file(clean, tmp_path, monkeypatch):
    def refuse(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(radimagenet.os, "replace", refuse)
    dm = RadImageNetDataModule(clean["root"], **RAW)
    dm.setup("fit")
    with pytest.raises(OSError, match="disk full"):
        dm.save_class_index(tmp_path / "out/classes.json")
    assert list((tmp_path / "out").iterdir()) == []
    dm = RadImageNetDataModule(clean["root"], class_index_path=str(tmp_path / "index.json"), **RAW)
    (tmp_path / "index.json").write_text(json.dumps({"class_names": clean["classes"]}))  # reused: only the report
    dm.trainer = Trainer(default_root_dir=tmp_path / "logs", **QUIET)
    with pytest.raises(OSError, match="disk full"):
        dm.setup("fit")
    assert list((tmp_path / "logs").iterdir()) == []


def _rewrite_csv(root: Path, split: str, header: str, rows: list[tuple[str, str]]) -> None:
    (root / f"RadiologyAI_{split}.csv").write_text(header + "\n" + "".join(f"{f},{label}\n" for f, label in rows))


def test_malformed_inputs_are_named(clean, tmp_path):
    root = clean["root"]
    with pytest.raises(FileNotFoundError, match=r"(?s)does not exist.*RadiologyAI_train.csv.*data-use agreement"):
        RadImageNetDataModule(tmp_path / "nowhere").setup("fit")
    with pytest.raises(FileNotFoundError, match=r"(?s)No images under .*US/<label>"):
        (tmp_path / "empty").mkdir()
        RadImageNetDataModule(tmp_path / "empty", mode="folder").setup("fit")
    _rewrite_csv(root, "val", "filename,label", [*clean["rows"]["val"], (clean["rows"]["val"][0][0], "XR/chest/new")])
    with pytest.raises(ValueError, match=r"1 val images have classes outside the class index.*XR/chest/new"):
        RadImageNetDataModule(root, **RAW).setup("fit")
    _rewrite_csv(root, "val", "path,class", clean["rows"]["val"])
    with pytest.raises(ValueError, match=r"columns \['path', 'class'\]; expected filename,label"):
        RadImageNetDataModule(root, **RAW).setup("fit")
    _rewrite_csv(root, "val", "filename,label", [("elsewhere/x.png", "a")])
    with pytest.raises(ValueError, match="no CT/MR/US folder in its path"):
        RadImageNetDataModule(root, label_level="anatomy", check_images="exists", bad_images="drop").setup("fit")
    (root / "RadiologyAI_test.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"RadiologyAI_test.csv not found \(mode='csv'\)"):
        RadImageNetDataModule(root, **RAW).setup("fit")
    with pytest.raises(ValueError, match="bad_images must be one of"):
        RadImageNetDataModule(root, bad_images="ignore")


def test_example_config_parses_on_a_fake_root(clean, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-regs"])
    config = str(ROOT / "examples" / "radimagenet_resnet50.yaml")
    cli = LightningRegsCLI(args=["--config", config, "--data.init_args.root", str(clean["root"])], run=False)
    assert isinstance(cli.model, ImageClassifier) and isinstance(cli.model.backbone, torchvision.models.ResNet)
    assert [len(getattr(cli.model.backbone, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]  # ResNet-50
    assert cli.model.backbone.fc.out_features == cli.model.num_classes == 165
    assert isinstance(cli.datamodule, RadImageNetDataModule) and cli.datamodule.root == clean["root"]


class CountingRadImageNet(RadImageNetDataModule):
    """Records whether this process read the files itself."""

    def check(self, rows):
        self.checked_here = True
        return super().check(rows)


class SaveDataState(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_fit_start(self, trainer, pl_module):
        dm = trainer.datamodule
        state = {"checked_here": getattr(dm, "checked_here", False), "report": dm.report}
        state["train_files"] = [str(path) for path, _ in dm.datasets["train"].items]
        torch.save(state, Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_under_ddp_one_rank_checks_the_files_and_all_ranks_agree(defective, tmp_path):
    dm = CountingRadImageNet(defective["root"], bad_images="drop", image_size=8, batch_size=2)
    task = ImageClassifier(SmallCNN(num_classes=4, in_channels=3, width=4), num_classes=4)
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        default_root_dir=tmp_path,
        callbacks=[SaveDataState(str(tmp_path))],
        **{**QUIET, **DDP_SPAWN_CPU},
    )
    trainer.fit(task, dm)  # the data warning is raised in the spawned processes
    states = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    assert [state["checked_here"] for state in states] == [True, False]
    assert states[0]["report"] == states[1]["report"] and states[0]["report"]["missing"] == [defective["missing"]]
    assert states[0]["train_files"] == states[1]["train_files"] and len(states[0]["train_files"]) == 12
    assert json.loads((tmp_path / "radimagenet_classes.json").read_text())["class_names"] == defective["classes"]
