import json
import math
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torchvision.transforms import v2

from lightning_regs.cli import LightningRegsCLI
from lightning_regs.datamodules.cub import CUB200DataModule
from lightning_regs.models import SmallCNN
from lightning_regs.tasks import ImageClassifier
from tests.helpers.fake_datasets_vision import write_cub
from tests.helpers.trainers import QUIET

ROOT = Path(__file__).resolve().parents[1]
RAW = {"num_workers": 0, "eval_transform": v2.ToDtype(torch.float32, scale=True)}


@pytest.fixture
def cub(tmp_path):
    return write_cub(tmp_path, num_classes=4, per_class=4, grayscale_ids=(6,))


def _image_id_of(image: torch.Tensor) -> int:
    """The fake images encode (5 * image_id) % 256 in their first channel (grey ones in all)."""
    return round(float(image[0].mean()) * 255 / 5)


def _red_of(image_id: int) -> int:
    return image_id * 5 % 256 // 5


def test_lengths_labels_names_and_indices_match_what_was_written(tmp_path, cub):
    dm = CUB200DataModule(root=str(tmp_path), batch_size=3, train_transform=RAW["eval_transform"], **RAW)
    dm.setup("fit")
    assert dm.num_classes == 4 and dm.class_names == ("Bird_1", "Bird_2", "Bird_3", "Bird_4")
    for split, flag in (("train", True), ("test", False)):
        ids = [i for i, t in zip(cub["image_ids"], cub["is_train"], strict=True) if t == flag]
        classes = [c - 1 for c, t in zip(cub["class_ids"], cub["is_train"], strict=True) if t == flag]
        dataset = dm.datasets[split]
        assert len(dataset) == len(ids) == 8
        assert dataset.targets.tolist() == classes
        for position, image_id in enumerate(ids):
            sample = dataset[position]
            assert int(sample["index"]) == position and sample["image"].shape == (3, 30, 40)
            assert _image_id_of(sample["image"]) == _red_of(image_id)
    assert dm.datasets["val"] is dm.datasets["test"]  # without GCD, "val" is the official test split
    batch = next(iter(dm.test_dataloader()))
    assert sorted(batch) == ["image", "index", "target"] and batch["target"].dtype == torch.int64


def test_grayscale_jpegs_become_rgb_and_default_transforms_give_square_crops(tmp_path, cub):
    dm = CUB200DataModule(root=str(tmp_path / "CUB_200_2011"), image_size=16, num_workers=0)  # the folder itself
    dm.setup("fit")
    grey_position = [i for i, t in zip(cub["image_ids"], cub["is_train"], strict=True) if t].index(5)
    assert dm.datasets["train"][grey_position]["image"].shape == (3, 16, 16)
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (8, 3, 16, 16) and batch["image"].dtype == torch.float32


def test_bounding_box_crop(tmp_path, cub):
    dm = CUB200DataModule(root=str(tmp_path), crop_to_bbox=True, **RAW)
    dm.setup("test")
    test_rows = [k for k, t in enumerate(cub["is_train"]) if not t]
    for position, row in enumerate(test_rows):
        x, y, w, h = cub["boxes"][row]
        expected = (3, min(30, math.ceil(y + h)) - math.floor(y), min(40, math.ceil(x + w)) - math.floor(x))
        assert tuple(dm.datasets["test"][position]["image"].shape) == expected


def test_gcd_mode_defaults(tmp_path, cub):
    dm = CUB200DataModule(root=str(tmp_path), gcd=True, seed=1, **RAW)
    dm.setup("fit")
    assert dm.known_classes == (0, 1) and dm.num_known_classes == 2
    train = dm.datasets["train"]
    written = [c - 1 for c, t in zip(cub["class_ids"], cub["is_train"], strict=True) if t]  # known 0, 1 stay first
    assert train.true_targets.tolist() == written
    known_train = [k for k, c in enumerate(written) if c < 2]
    assert len(known_train) == 4
    labeled = torch.nonzero(train.labeled).flatten().tolist()
    assert len(labeled) == 2 and set(labeled) <= set(known_train)  # half of the known-class training images
    assert torch.equal(dm.labeled_indices, torch.tensor(labeled))
    # the training targets hide every unlabeled image's class (novel ones included): only labeled rows have one
    assert train.targets.tolist() == [c if k in labeled else -1 for k, c in enumerate(written)]
    val = dm.datasets["val"]  # the unlabeled training images, for transductive GCD evaluation
    assert len(val) == 6 and not val.labeled.any()
    assert sorted(val.paths.tolist() + train.paths[labeled].tolist()) == sorted(train.paths.tolist())
    unlabeled = [k for k in range(len(written)) if k not in labeled]
    assert val.targets.tolist() == val.true_targets.tolist() == [written[k] for k in unlabeled]  # evaluation: truth
    batches = list(dm.train_dataloader())
    batch = {key: torch.cat([b[key] for b in batches]) for key in batches[0]}
    assert sorted(batch) == ["image", "index", "labeled", "target", "true_target"]
    assert batch["labeled"].dtype == torch.bool and batch["true_target"].dtype == torch.int64
    assert torch.equal(batch["target"] == -1, ~batch["labeled"])
    assert batch["true_target"].tolist() == [written[k] for k in batch["index"].tolist()]
    assert not dm.datasets["test"].labeled.any()
    test = next(iter(dm.test_dataloader()))
    assert torch.equal(test["target"], test["true_target"]) and (test["target"] >= 0).all()
    different = [CUB200DataModule(root=str(tmp_path), gcd=True, seed=s, **RAW) for s in range(8)]
    for other in different:
        other.setup()
    assert len({tuple(o.labeled_indices.tolist()) for o in different}) > 1


def test_gcd_known_classes_come_first_in_the_targets(tmp_path, cub):
    dm = CUB200DataModule(root=str(tmp_path), gcd=True, known_classes=[3, 1], **RAW)
    dm.setup()
    assert dm.class_order.tolist() == [3, 1, 0, 2]
    assert dm.class_names == ("Bird_4", "Bird_2", "Bird_1", "Bird_3")
    remap = {3: 0, 1: 1, 0: 2, 2: 3}
    written = [remap[c - 1] for c, t in zip(cub["class_ids"], cub["is_train"], strict=True) if not t]
    assert dm.datasets["test"].targets.tolist() == written
    train = dm.datasets["train"]
    assert (train.targets[train.labeled] < 2).all() and (train.targets[~train.labeled] == -1).all()
    written_train = [remap[c - 1] for c, t in zip(cub["class_ids"], cub["is_train"], strict=True) if t]
    assert train.true_targets.tolist() == written_train


def test_gcd_split_from_json(tmp_path, cub):
    spec = {"known_classes": [2, 0], "unknown_classes": {"Easy": [1], "Medium": [], "Hard": [3]}}
    path = tmp_path / "split.json"
    path.write_text(json.dumps(spec))
    dm = CUB200DataModule(root=str(tmp_path), gcd=True, gcd_split_file=str(path), **RAW)
    dm.setup()
    assert dm.class_order.tolist() == [2, 0, 3, 1]  # unknown listed Hard + Medium + Easy, as SimGCD does
    path.write_text(json.dumps({"known_classes": [2, 0], "unknown_classes": [1]}))
    with pytest.raises(ValueError, match="every class id"):
        CUB200DataModule(root=str(tmp_path), gcd=True, gcd_split_file=str(path), **RAW).setup()


def test_the_shipped_ssb_split_is_the_official_one_and_gcd_split_file_ssb_reads_it(tmp_path, cub):
    from lightning_regs.datamodules.cub import SSB_SPLIT_FILE

    spec = json.loads(SSB_SPLIT_FILE.read_text())
    unknown = spec["unknown_classes"]
    assert {name: len(ids) for name, ids in unknown.items()} == {"Easy": 32, "Medium": 34, "Hard": 34}
    assert sorted(spec["known_classes"] + [c for ids in unknown.values() for c in ids]) == list(range(200))
    # spot values of sgvaze/osr_closed_set_all_you_need's cub_osr_splits.pkl (0-based), as read with pickle
    assert spec["known_classes"][:6] == [150, 70, 34, 178, 199, 131]
    assert sorted(spec["known_classes"])[:4] == [0, 5, 7, 9]
    assert sorted(unknown["Easy"])[:3] == [1, 4, 6] and sorted(unknown["Hard"])[:3] == [3, 8, 13]
    assert "3258f058d4fd75cb88e23d0bd638d24b629e60d3" in spec["source"]
    with pytest.raises(ValueError, match="every class id"):  # the 4-class fake CUB is not CUB-200
        CUB200DataModule(root=str(tmp_path), gcd=True, gcd_split_file="ssb", **RAW).setup()


def test_gcd_split_is_kept_in_state_dict(tmp_path, cub):
    dm = CUB200DataModule(root=str(tmp_path), gcd=True, seed=2, **RAW)
    dm.setup()
    torch.save(dm.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    restored = CUB200DataModule(root=str(tmp_path), gcd=True, seed=5, **RAW)
    restored.setup()
    restored.load_state_dict(state)
    restored.setup()
    assert torch.equal(restored.labeled_indices, dm.labeled_indices)
    assert torch.equal(restored.datasets["train"].labeled, dm.datasets["train"].labeled)
    other_known = CUB200DataModule(root=str(tmp_path), gcd=True, known_classes=[0, 2], **RAW)
    with pytest.raises(ValueError, match="known classes"):
        other_known.load_state_dict(state)
    with pytest.raises(ValueError, match="gcd=False"):
        CUB200DataModule(root=str(tmp_path), **RAW).load_state_dict(state)


def test_bad_known_classes_are_named(tmp_path, cub):
    with pytest.raises(ValueError, match=r"distinct 0-based ids in \[0, 4\)"):
        CUB200DataModule(root=str(tmp_path), gcd=True, known_classes=[0, 4], **RAW).setup()
    with pytest.raises(ValueError, match="distinct"):
        CUB200DataModule(root=str(tmp_path), gcd=True, known_classes=[1, 1], **RAW).setup()


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="labeled_fraction"):
        CUB200DataModule(root=str(tmp_path), gcd=True, labeled_fraction=0)
    with pytest.raises(ValueError, match="only apply with gcd=True"):
        CUB200DataModule(root=str(tmp_path), known_classes=[0])
    with pytest.raises(ValueError, match="not both"):
        CUB200DataModule(root=str(tmp_path), gcd=True, known_classes=[0], gcd_split_file="x.json")


def _edit(name: str, old: str, new: str):
    def damage(folder: Path) -> None:
        path = folder / name
        path.write_text(path.read_text().replace(old, new, 1))

    return damage


def _append(name: str, line: str):
    def damage(folder: Path) -> None:
        with open(folder / name, "a") as handle:
            handle.write(line + "\n")

    return damage


@pytest.mark.parametrize(
    ("damage", "message", "error"),
    [
        (lambda f: (f / "images.txt").unlink(), r"lacks \['images.txt'\].*CaltechDATA", FileNotFoundError),
        (lambda f: (f / "classes.txt").unlink(), r"lacks \['classes.txt'\]", FileNotFoundError),
        (lambda f: (f / "train_test_split.txt").unlink(), r"lacks \['train_test_split.txt'\]", FileNotFoundError),
        (lambda f: (f / "image_class_labels.txt").unlink(), r"lacks \['image_class_labels.txt'\]", FileNotFoundError),
        (
            lambda f: (f / "images/001.Bird_1/Bird_1_0001.jpg").unlink(),
            "1 image.*missing.*Bird_1_0001",
            FileNotFoundError,
        ),
        (_edit("images.txt", "1 001", "1 001 extra"), r"images.txt, line 1: expected 2 fields", ValueError),
        (_edit("image_class_labels.txt", "2 1", "2 one"), r"image_class_labels.txt, line 2", ValueError),
        (_append("images.txt", "1 001.Bird_1/Bird_1_0001.jpg"), "appears twice", ValueError),
        (
            _append("images.txt", "99 001.Bird_1/Bird_1_0001.jpg"),
            r"list different image ids \(e.g. \[99\]\)",
            ValueError,
        ),
        (_edit("image_class_labels.txt", "3 1", "3 9"), r"class id outside 1..4", ValueError),
        (_edit("train_test_split.txt", "1 1", "1 2"), "train/test flag", ValueError),
        (_edit("classes.txt", "4 004", "7 004"), "1..N without gaps", ValueError),
    ],
)
def test_every_malformed_layout_names_its_problem(tmp_path, cub, damage, message, error):
    damage(cub["folder"])
    with pytest.raises(error, match=message):
        CUB200DataModule(root=str(tmp_path), **RAW).setup("fit")


def test_bounding_box_file_is_checked_only_when_cropping(tmp_path, cub):
    _edit("bounding_boxes.txt", "1 ", "1 -3 ")(cub["folder"])  # five numbers + an extra field on line 1
    CUB200DataModule(root=str(tmp_path), **RAW).setup()
    with pytest.raises(ValueError, match=r"bounding_boxes\.txt, line 1"):
        CUB200DataModule(root=str(tmp_path), crop_to_bbox=True, **RAW).setup()
    _edit("bounding_boxes.txt", "1 -3 ", "1 ")(cub["folder"])
    lines = (cub["folder"] / "bounding_boxes.txt").read_text().splitlines()
    lines[1] = "2 1.0 1.0 0.0 5.0"
    (cub["folder"] / "bounding_boxes.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="non-positive width or height"):
        CUB200DataModule(root=str(tmp_path), crop_to_bbox=True, **RAW).setup()
    (cub["folder"] / "bounding_boxes.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"bounding_boxes\.txt"):
        CUB200DataModule(root=str(tmp_path), crop_to_bbox=True, **RAW).setup()


def test_missing_tree_explains_the_manual_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"65de6-vp158.*97eceeb1.*images/<class folder>"):
        CUB200DataModule(root=str(tmp_path / "nowhere")).setup()


def test_example_config_parses(tmp_path, cub, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-regs"])
    config = ROOT / "examples" / "cub200_resnet18.yaml"
    cli = LightningRegsCLI(args=["--config", str(config), "--data.init_args.root", str(tmp_path)], run=False)
    assert isinstance(cli.datamodule, CUB200DataModule) and cli.model.num_classes == 200
    assert cli.model.backbone.fc.out_features == 200
    cli.datamodule.setup("fit")
    assert len(cli.datamodule.datasets["train"]) == 8


def test_a_plain_classifier_refuses_gcd_training_batches(tmp_path, cub):
    dm = CUB200DataModule(root=str(tmp_path), gcd=True, batch_size=8, train_transform=RAW["eval_transform"], **RAW)
    model = ImageClassifier(SmallCNN(num_classes=4, in_channels=3, width=4), num_classes=4)
    trainer = Trainer(max_epochs=1, default_root_dir=tmp_path, **QUIET)
    with pytest.raises(ValueError, match=r"holds the label -1 .*labels must lie in \[0, 3\]"):
        trainer.fit(model, datamodule=dm)


def test_path_arguments_are_stored_as_strings_so_checkpoints_load_with_weights_only(tmp_path, cub):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"known_classes": [0, 1], "unknown_classes": [2, 3]}))
    dm = CUB200DataModule(root=tmp_path, gcd=True, gcd_split_file=split, **RAW)  # Paths, as Python users pass them
    assert dm.hparams["root"] == str(tmp_path) and dm.hparams["gcd_split_file"] == str(split)
    torch.save(dict(dm.hparams), tmp_path / "hparams.pt")
    assert torch.load(tmp_path / "hparams.pt", weights_only=True)["gcd_split_file"] == str(split)
    plain = CUB200DataModule(root=tmp_path, batch_size=8, train_transform=RAW["eval_transform"], **RAW)
    model = ImageClassifier(SmallCNN(num_classes=4, in_channels=3, width=4), num_classes=4)
    trainer = Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, default_root_dir=tmp_path, **QUIET)
    trainer.fit(model, datamodule=plain)
    trainer.save_checkpoint(tmp_path / "cub.ckpt")
    checkpoint = torch.load(tmp_path / "cub.ckpt", weights_only=True)
    assert checkpoint["datamodule_hyper_parameters"]["root"] == str(tmp_path)
