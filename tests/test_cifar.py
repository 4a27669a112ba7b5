import hashlib
import os
import pickle
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from lightning_regs.cli import LightningRegsCLI
from lightning_regs.datamodules.cifar import CIFAR10DataModule, CIFAR100DataModule, load_cifar_pickle
from lightning_regs.datamodules.download import ChecksumError
from lightning_regs.models import SmallCNN
from lightning_regs.tasks import ImageClassifier
from tests.helpers.ddp import DDP_SPAWN_CPU
from tests.helpers.fake_datasets_vision import dump_py2, write_cifar, write_cifar_tarball
from tests.helpers.trainers import QUIET

ROOT = Path(__file__).resolve().parents[1]


def _normalized(images_hwc: np.ndarray, dm) -> torch.Tensor:
    images = torch.from_numpy(images_hwc).permute(0, 3, 1, 2).float() / 255
    return (images - torch.tensor(dm.mean).view(1, 3, 1, 1)) / torch.tensor(dm.std).view(1, 3, 1, 1)


@pytest.mark.parametrize(("cls", "num_classes"), [(CIFAR10DataModule, 10), (CIFAR100DataModule, 100)])
def test_lengths_labels_names_indices_and_pixels_match_what_was_written(tmp_path, cls, num_classes):
    written = write_cifar(tmp_path, num_classes=num_classes, train_per_batch=3, num_test=7)
    dm = cls(root=str(tmp_path), batch_size=4, num_workers=0)
    dm.setup("fit")
    assert dm.num_classes == num_classes and dm.class_names == tuple(written["class_names"])
    assert len(dm.datasets["train"]) == 15 and len(dm.datasets["test"]) == 7
    assert dm.datasets["val"] is dm.datasets["test"]  # no carve: "val" is the official test split
    assert dm.datasets["train"].targets.tolist() == written["train_labels"]
    batches = list(dm.test_dataloader())
    images = torch.cat([b["image"] for b in batches])
    assert torch.cat([b["target"] for b in batches]).tolist() == written["test_labels"]
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(7))
    assert images.dtype == torch.float32 and images.shape == (7, 3, 32, 32)
    torch.testing.assert_close(images, _normalized(written["test_images"], dm))
    train_batch = next(iter(dm.train_dataloader()))
    assert train_batch["image"].shape == (4, 3, 32, 32) and train_batch["target"].dtype == torch.int64
    # the training index points at the image it came from (the crop keeps most pixels of the centre)
    sample = dm.datasets["train"][9]
    assert int(sample["index"]) == 9 and int(sample["target"]) == written["train_labels"][9]


def test_train_order_is_a_function_of_seed_and_epoch(tmp_path):
    write_cifar(tmp_path)
    orders = []
    for _ in range(2):
        dm = CIFAR10DataModule(root=str(tmp_path), batch_size=5, num_workers=0)
        loader = dm.train_dataloader()
        orders.append([int(i) for b in loader for i in b["index"]])
    assert orders[0] == orders[1] and sorted(orders[0]) == list(range(30))
    loader.sampler.set_epoch(1)
    assert [int(i) for b in loader for i in b["index"]] != orders[0]


def test_seeded_validation_carve_is_kept_in_state_dict(tmp_path):
    written = write_cifar(tmp_path, train_per_batch=4)
    dm = CIFAR10DataModule(root=str(tmp_path), val_fraction=0.25, seed=3, num_workers=0)
    dm.setup()
    train, val = dm.split_indices["train"], dm.split_indices["val"]
    assert len(val) == 5 and sorted(torch.cat([train, val]).tolist()) == list(range(20))
    assert dm.datasets["val"].targets.tolist() == [written["train_labels"][i] for i in val.tolist()]
    assert dm.datasets["val"] is not dm.datasets["test"]
    again = CIFAR10DataModule(root=str(tmp_path), val_fraction=0.25, seed=3, num_workers=0)
    again.setup()
    assert torch.equal(again.split_indices["val"], val)
    other = CIFAR10DataModule(root=str(tmp_path), val_fraction=0.25, seed=4, num_workers=0)
    other.setup()
    assert not torch.equal(other.split_indices["val"], val)
    state = dm.state_dict()
    path = tmp_path / "state.pt"
    torch.save(state, path)
    restored = CIFAR10DataModule(root=str(tmp_path), val_fraction=0.25, seed=4, num_workers=0)
    with pytest.warns(UserWarning, match="checkpoint's split is used"):
        restored.load_state_dict(torch.load(path, weights_only=True))
    restored.setup()
    assert torch.equal(restored.split_indices["val"], val)
    assert torch.equal(restored.datasets["val"].images, dm.datasets["val"].images)
    # the checkpoint's seed also orders the training samples, as in the uninterrupted run
    assert restored.seed == 3
    orders = [[int(i) for b in module.train_dataloader() for i in b["index"]] for module in (dm, restored, other)]
    assert orders[0] == orders[1] != orders[2]


def test_download_from_a_file_url_verifies_and_extracts(tmp_path, monkeypatch):
    source = tmp_path / "server"
    written = write_cifar(source / "build")
    archive = write_cifar_tarball(written["folder"], source / "cifar-10-python.tar.gz")
    monkeypatch.setattr(CIFAR10DataModule, "url", archive.as_uri())
    monkeypatch.setattr(CIFAR10DataModule, "sha256", hashlib.sha256(archive.read_bytes()).hexdigest())
    root = tmp_path / "data"
    dm = CIFAR10DataModule(root=str(root), download=True, num_workers=0)
    dm.prepare_data()
    dm.setup("test")
    assert len(dm.datasets["test"]) == 8 and dm.datasets["test"].targets.tolist() == written["test_labels"]
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    dm.prepare_data()  # complete tree: nothing to do


def test_download_with_a_wrong_checksum_leaves_nothing(tmp_path, monkeypatch):
    written = write_cifar(tmp_path / "server" / "build")
    archive = write_cifar_tarball(written["folder"], tmp_path / "server" / "cifar-10-python.tar.gz")
    monkeypatch.setattr(CIFAR10DataModule, "url", archive.as_uri())  # the real sha256 stays: it cannot match
    root = tmp_path / "data"
    dm = CIFAR10DataModule(root=str(root), download=True, num_workers=0)
    with pytest.raises(ChecksumError, match="6d958be0"):
        dm.prepare_data()
    assert list(root.iterdir()) == []


def test_missing_data_without_download_names_layout_and_source(tmp_path):
    dm = CIFAR100DataModule(root=str(tmp_path), num_workers=0)
    dm.prepare_data()  # download=False: no network, no error yet
    with pytest.raises(
        FileNotFoundError, match=r"cifar-100-python lacks.*cifar-100-python.tar.gz.*85cd44d0.*download=True"
    ):
        dm.setup("fit")


def _rewrite(path: Path, **changes) -> None:
    content = load_cifar_pickle(path)
    content.update(changes)
    dump_py2(content, path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "data_batch_3").unlink(), r"lacks \['data_batch_3'\]"),
        (lambda f: (f / "batches.meta").unlink(), r"lacks \['batches.meta'\]"),
        (lambda f: _rewrite(f / "data_batch_2", data=np.zeros((6, 100), np.uint8)), r"shape \(N, 3072\)"),
        (lambda f: _rewrite(f / "data_batch_2", data=np.zeros((6, 3072), np.float32)), "uint8"),
        (lambda f: _rewrite(f / "test_batch", labels=[0, 1]), "one label per image"),
        (lambda f: _rewrite(f / "test_batch", labels=[10] * 8), r"labels must lie in \[0, 10\)"),
        (lambda f: _rewrite(f / "batches.meta", label_names=["a", "b"]), "10 names under 'label_names'"),
        (lambda f: (f / "data_batch_1").write_bytes(b"garbage"), "pickle|load key"),
    ],
)
def test_every_malformed_layout_names_its_problem(tmp_path, damage, message):
    written = write_cifar(tmp_path)
    damage(written["folder"])
    dm = CIFAR10DataModule(root=str(tmp_path), num_workers=0)
    with pytest.raises((FileNotFoundError, ValueError, pickle.UnpicklingError), match=message):
        dm.setup("fit")


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_referencing_os_system_is_refused(tmp_path):
    written = write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    # the checksum is bypassed: the file sits in an extracted tree, as after tampering
    (written["folder"] / "data_batch_1").write_bytes(pickle.dumps({"data": _Exploit(marker)}, protocol=2))
    dm = CIFAR10DataModule(root=str(tmp_path), num_workers=0)
    with pytest.raises(pickle.UnpicklingError, match=r"global (posix|os)\.system"):
        dm.setup("fit")
    assert not marker.exists()


def test_transforms_from_yaml_and_the_example_config_parse(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-regs"])
    write_cifar(tmp_path)
    config = ROOT / "examples" / "cifar10_resnet20.yaml"
    cli = LightningRegsCLI(args=["--config", str(config), "--data.init_args.root", str(tmp_path)], run=False)
    dm = cli.datamodule
    assert isinstance(dm, CIFAR10DataModule) and cli.model.num_classes == dm.num_classes == 10
    assert isinstance(dm.train_transform, v2.Compose)
    dm.num_workers, dm.persistent_workers, dm.pin_memory = 0, False, False
    dm.setup("fit")
    image = dm.datasets["train"][0]["image"]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)


class _RecordIndices(pl.Callback):
    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.seen: dict[str, list[int]] = {"train": [], "val": []}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen["train"] += batch["index"].tolist()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.seen["val"] += batch["index"].tolist()

    def on_fit_end(self, trainer, pl_module):
        torch.save(self.seen, Path(self.folder) / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_ddp_every_sample_seen_once_per_epoch_apart_from_padding(tmp_path):
    write_cifar(tmp_path / "data", train_per_batch=5, num_test=7)  # 25 train, 7 test: both pad under 2 ranks
    dm = CIFAR10DataModule(root=str(tmp_path / "data"), batch_size=4, num_workers=0)
    model = ImageClassifier(SmallCNN(num_classes=10, in_channels=3, width=4), num_classes=10)
    trainer = pl.Trainer(
        max_epochs=1,
        default_root_dir=tmp_path,
        callbacks=[_RecordIndices(str(tmp_path))],
        **{**QUIET, "deterministic": False},
        **DDP_SPAWN_CPU,
    )
    trainer.fit(model, datamodule=dm)
    seen = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for split, size in (("train", 25), ("val", 7)):
        per_rank = [s[split] for s in seen]
        assert [len(r) for r in per_rank] == [(size + 1) // 2] * 2
        everything = per_rank[0] + per_rank[1]
        assert sorted(set(everything)) == list(range(size))
        assert len(everything) - size == 1  # exactly the one sample DistributedSampler padded


def test_the_split_travels_in_a_trainer_checkpoint_and_is_restored_on_resume(tmp_path):
    write_cifar(tmp_path / "data", train_per_batch=4)
    common = {"root": tmp_path / "data", "batch_size": 8, "val_fraction": 0.2, "num_workers": 0}  # a Path root
    dm = CIFAR10DataModule(seed=1, **common)
    model = ImageClassifier(SmallCNN(num_classes=10, in_channels=3, width=4), num_classes=10)
    trainer = pl.Trainer(max_epochs=1, default_root_dir=tmp_path, **QUIET)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)  # hparams hold builtins only
    assert checkpoint["datamodule_hyper_parameters"]["root"] == str(tmp_path / "data")
    assert torch.equal(checkpoint["CIFAR10DataModule"]["val_indices"], dm.split_indices["val"])
    resumed = CIFAR10DataModule(seed=2, **common)  # another seed: the checkpoint's split must win
    model = ImageClassifier(SmallCNN(num_classes=10, in_channels=3, width=4), num_classes=10)
    trainer = pl.Trainer(max_epochs=2, default_root_dir=tmp_path, **QUIET)
    with pytest.warns(UserWarning, match="checkpoint's split is used"):
        trainer.fit(model, datamodule=resumed, ckpt_path=tmp_path / "last.ckpt")
    assert torch.equal(resumed.split_indices["val"], dm.split_indices["val"])
    assert torch.equal(resumed.datasets["val"].targets, dm.datasets["val"].targets)
    assert resumed.seed == 1  # the training order continues as in the uninterrupted run
