import pytest
import torch
from sklearn.datasets import load_digits

from lightning_regs.datamodules import DigitsDataModule, EpochShuffleSampler


def test_split_is_disjoint_covering_and_seeded():
    dm = DigitsDataModule(seed=3)
    dm.setup("fit")
    parts = [dm.split_indices[s] for s in ("train", "val", "test")]
    joined = torch.cat(parts).sort().values
    assert torch.equal(joined, torch.arange(1797))
    assert [len(p) for p in parts] == [1797 - 270 - 270, 270, 270]
    again = DigitsDataModule(seed=3)
    again.setup("fit")
    assert all(torch.equal(again.split_indices[s], dm.split_indices[s]) for s in dm.split_indices)
    other = DigitsDataModule(seed=4)
    other.setup("fit")
    assert not torch.equal(other.split_indices["val"], dm.split_indices["val"])


def test_split_does_not_depend_on_the_global_rng():
    torch.manual_seed(1)
    a = DigitsDataModule().draw_split(100)
    torch.manual_seed(2)
    b = DigitsDataModule().draw_split(100)
    assert torch.equal(a["train"], b["train"])


def test_state_round_trip_restores_the_split_even_with_another_seed():
    dm = DigitsDataModule(seed=0)
    dm.setup("fit")
    state = dm.state_dict()
    restored = DigitsDataModule(seed=1)
    restored.setup("fit")
    with pytest.warns(UserWarning, match="seed 0"):
        restored.load_state_dict(state)
    for split in ("train", "val", "test"):
        assert torch.equal(restored.datasets[split].images, dm.datasets[split].images)
        assert torch.equal(restored.datasets[split].targets, dm.datasets[split].targets)


def test_state_is_loadable_with_weights_only(tmp_path):
    dm = DigitsDataModule()
    dm.setup("fit")
    torch.save(dm.state_dict(), tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    assert torch.equal(loaded["train_indices"], dm.split_indices["train"])


def test_samples_are_the_real_digits_normalized_with_train_statistics():
    dm = DigitsDataModule(seed=0)
    dm.setup("fit")
    raw = load_digits()
    train = dm.datasets["train"]
    position = 7
    original = int(dm.split_indices["train"][position])
    assert int(train.targets[position]) == raw.target[original]
    pixels = torch.as_tensor(raw.images, dtype=torch.float32) / 16
    train_pixels = pixels[dm.split_indices["train"]]
    expected = (pixels[original] - train_pixels.mean()) / train_pixels.std()
    torch.testing.assert_close(train.images[position, 0], expected)
    assert train.images.mean().abs() < 1e-5 and (train.images.std() - 1).abs() < 1e-5


def test_batch_contract_and_resize():
    dm = DigitsDataModule(batch_size=16, image_size=32, channels=3)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"image", "target", "index"}
    assert batch["image"].shape == (16, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["target"].dtype == torch.int64 and batch["index"].tolist() == list(range(16))
    assert torch.equal(batch["target"], dm.datasets["val"].targets[:16])
    assert dm.image_shape == (3, 32, 32) and dm.num_classes == 10 and len(dm.class_names) == 10


def test_training_order_depends_only_on_seed_and_epoch():
    dm = DigitsDataModule(batch_size=1000)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochShuffleSampler)
    first = next(iter(loader))["index"]
    loader.sampler.set_epoch(1)
    second = next(iter(loader))["index"]
    torch.manual_seed(123)
    loader.sampler.set_epoch(0)
    assert torch.equal(next(iter(loader))["index"], first) and not torch.equal(first, second)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "sum below 1"),
        ({"channels": 2}, "channels"),
        ({"image_size": 0}, "image_size"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DigitsDataModule(**kwargs)
