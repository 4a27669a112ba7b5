"""IndexedDataset turns any map-style data set into the batch contract; class_ids and the soft-target warning."""

from __future__ import annotations

import pickle
import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

from lightning_regs.callbacks import LabelSmoothing, ProgressiveSelfKD
from lightning_regs.datamodules import IndexedDataset, class_ids

TRAINER = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "max_epochs": 2,
}


class FakeVision(Dataset):
    """What a torchvision data set with a transform returns: ``(image, int)``, and its ``classes``."""

    classes = ("cat", "dog", "bird")

    def __init__(self, n: int = 5, pil: bool = False) -> None:
        self.n = n
        self.pil = pil

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Any, int]:
        if self.pil:
            from PIL import Image

            return Image.new("L", (4, 4)), i % 3
        return torch.full((3, 4, 4), float(i)), i % 3


class Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(1), 0


class UserModule(LightningModule):
    """A user's own module: plain cross-entropy on batch["target"], accuracy against class_ids(batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
        self.seen: list[tuple[int, torch.Size, torch.dtype, torch.Size]] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self.net(batch["image"])
        loss = F.cross_entropy(logits, batch["target"])
        ids = class_ids(batch)
        self.log("train/acc", (logits.argmax(-1) == ids).float().mean())
        self.seen.append((self.current_epoch, batch["target"].shape, ids.dtype, ids.shape))
        return {"loss": loss, "logits": logits}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SoftAwareModule(UserModule):
    accepts_soft_targets = True


def images_and_labels(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 4, (n,), generator=generator)


def test_a_tensor_dataset_becomes_dict_samples_with_their_position():
    x, y = images_and_labels(6)
    ds = IndexedDataset(TensorDataset(x, y))
    sample = ds[4]
    assert sorted(sample) == ["image", "index", "target"]
    torch.testing.assert_close(sample["image"], x[4])
    assert sample["target"].dtype == torch.long and sample["target"].shape == () and int(sample["target"]) == y[4]
    assert sample["index"].dtype == torch.long and int(sample["index"]) == 4
    assert int(ds[-1]["index"]) == 5
    batch = next(iter(DataLoader(ds, batch_size=6)))
    assert batch["index"].tolist() == list(range(6)) and torch.equal(batch["target"], y)
    assert len(ds) == 6 and ds.dataset.tensors[0] is x


def test_tuples_drop_their_extras_unless_keys_name_them():
    samples = [(torch.zeros(1, 2, 2), 1, "a.png", torch.ones(2)), [torch.ones(1, 2, 2), 0, "b.png", torch.zeros(2)]]
    assert sorted(IndexedDataset(samples)[0]) == ["image", "index", "target"]
    kept = IndexedDataset(samples, keys={3: "mask"})[1]
    assert sorted(kept) == ["image", "index", "mask", "target"] and kept["mask"].tolist() == [0.0, 0.0]
    swapped = IndexedDataset([(2, torch.zeros(3))], keys={0: "target", 1: "image"})[0]
    assert int(swapped["target"]) == 2 and swapped["image"].shape == (3,)
    with pytest.raises(ValueError, match="always sets"):
        IndexedDataset(samples, keys={2: "index"})


def test_dict_samples_are_renamed_and_their_index_is_overwritten():
    samples = [{"img": torch.zeros(1, 2, 2), "label": torch.tensor(3), "index": 99, "mask": torch.ones(1, 2, 2)}] * 2
    sample = IndexedDataset(samples, keys={"img": "image", "label": "target"})[1]
    assert sorted(sample) == ["image", "index", "mask", "target"]
    assert int(sample["target"]) == 3 and int(sample["index"]) == 1
    assert int(IndexedDataset([{"image": torch.zeros(1), "target": 0}])[0]["target"]) == 0
    with pytest.raises(TypeError, match=r"dict with keys \['img', 'label'\].*keys=\{'img': 'image'"):
        IndexedDataset([{"img": torch.zeros(1), "label": 0}])[0]


def test_a_torchvision_style_data_set_and_its_classes():
    ds = IndexedDataset(FakeVision())
    assert ds.num_classes == 3 and IndexedDataset(Subset(FakeVision(), [0, 1])).num_classes == 3
    assert IndexedDataset(TensorDataset(*images_and_labels(2))).num_classes is None
    batch = next(iter(DataLoader(ds, batch_size=5)))
    assert batch["image"].shape == (5, 3, 4, 4) and batch["target"].tolist() == [0, 1, 2, 0, 1]
    assert batch["image"][2, 0, 0, 0] == 2.0


def test_pil_images_ask_for_a_tensor_transform():
    pytest.importorskip("PIL")
    with pytest.raises(TypeError, match=r"sample 1's image is a PIL image.*ToTensor\(\).*v2\.ToImage\(\)"):
        IndexedDataset(FakeVision(pil=True))[1]


@pytest.mark.parametrize(
    "target",
    [np.int64(2), np.int32(2), np.array(2), np.array([2]), torch.tensor([2]), torch.tensor(2, dtype=torch.uint8), 2.0],
)
def test_every_kind_of_single_class_id_becomes_an_int64_scalar(target):
    label = IndexedDataset([(torch.zeros(1), target)])[0]["target"]
    assert label.dtype == torch.long and label.shape == () and int(label) == 2


def test_labels_that_are_not_class_ids_are_named():
    with pytest.raises(ValueError, match=r"sample 1's target is 0\.9.*must be class ids"):
        IndexedDataset([(torch.zeros(1), 1), (torch.zeros(1), 0.9)])[1]
    with pytest.raises(ValueError, match=r"shape \(3,\).*must be class ids"):
        IndexedDataset([(torch.zeros(1), torch.tensor([0.0, 1.0, 0.0]))])[0]
    with pytest.raises(TypeError, match="target is a str"):
        IndexedDataset([(torch.zeros(1), "cat")])[0]


def test_non_map_style_data_and_unknown_sample_structures_are_named():
    with pytest.raises(TypeError, match=r"map-style.*got Stream"):
        IndexedDataset(Stream())
    with pytest.raises(TypeError, match="map-style"):
        IndexedDataset(object())
    with pytest.raises(TypeError, match=r"sample 0 of list is a Tensor; expected an \(image, target\) tuple"):
        IndexedDataset([torch.zeros(3)])[0]
    with pytest.raises(TypeError, match="is a tuple of 1 items; expected"):
        IndexedDataset([(torch.zeros(3),)])[0]


def test_it_pickles_for_ddp_spawn():
    ds = IndexedDataset(FakeVision(), keys={0: "image"})
    restored = pickle.loads(pickle.dumps(ds))
    assert restored.keys == {0: "image"} and restored.num_classes == 3
    torch.testing.assert_close(restored[3], ds[3])


def test_class_ids_reads_hard_target_when_a_callback_ran():
    ids = torch.tensor([1, 0])
    assert class_ids({"target": ids}) is ids
    assert class_ids({"target": torch.tensor([[0.1, 0.9], [0.8, 0.2]]), "hard_target": ids}) is ids
    with pytest.raises(ValueError, match="no 'hard_target'"):
        class_ids({"target": torch.tensor([[0.1, 0.9]])})
    assert class_ids((torch.zeros(2), ids)) is ids  # an (image, target) pair, as tasks accept
    with pytest.raises(TypeError, match="IndexedDataset"):
        class_ids(torch.zeros(2))


def fit(module: LightningModule, callbacks: list, dataset: Dataset) -> list[str]:
    """Train 2 epochs; the soft-target warnings it emitted, repeats included (recwarn would drop those)."""
    seed_everything(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(callbacks=callbacks, **TRAINER).fit(module, DataLoader(dataset, batch_size=8))
    return [str(w.message) for w in caught if "accepts_soft_targets" in str(w.message)]


@pytest.mark.parametrize("method", ["pskd", "label_smoothing"])
def test_a_users_own_module_trains_with_soft_target_callbacks_and_is_warned_once(method):
    callback = ProgressiveSelfKD(alpha_T=0.8) if method == "pskd" else LabelSmoothing(0.1, num_classes=4)
    module = UserModule()
    (message,) = fit(module, [callback], IndexedDataset(TensorDataset(*images_and_labels())))
    assert all(dtype == torch.long and shape == (8,) for _, _, dtype, shape in module.seen)
    soft_epochs = {epoch for epoch, target_shape, _, _ in module.seen if target_shape == (8, 4)}
    assert soft_epochs == ({1} if method == "pskd" else {0, 1})
    if method == "pskd":
        assert bool(callback.table.seen.all())
    starts = "ProgressiveSelfKD (from epoch 1)" if method == "pskd" else "LabelSmoothing (from the first training step)"
    assert starts in message and "class_ids(batch)" in message and "on UserModule" in message


def test_one_warning_names_every_softening_callback_and_a_declaring_module_gets_none():
    data = IndexedDataset(TensorDataset(*images_and_labels()))
    (message,) = fit(UserModule(), [ProgressiveSelfKD(), LabelSmoothing(0.1, num_classes=4)], data)
    assert message.startswith("ProgressiveSelfKD (from epoch 1), LabelSmoothing (from the first training step)")
    pskd = ProgressiveSelfKD()
    assert fit(SoftAwareModule(), [pskd, LabelSmoothing(0.1, num_classes=4)], data) == []
    assert bool(pskd.table.seen.all())


@pytest.mark.parametrize("callback", [ProgressiveSelfKD, LabelSmoothing])
def test_tuple_batches_name_indexed_dataset(callback):
    with pytest.raises(TypeError, match=r"IndexedDataset\(dataset\)"):
        fit(SoftAwareModule(), [callback(num_classes=4)], TensorDataset(*images_and_labels()))
