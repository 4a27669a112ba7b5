"""DigitsBagsDataModule: MNIST-style bags of scikit-learn digits, checked against the raw digits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from sklearn.datasets import load_digits
from torch import nn

from lightning_regs.datamodules.digits_bags import DigitsBagsDataModule
from lightning_regs.datamodules.samplers import EpochShuffleSampler
from tests.helpers.trainers import QUIET, CrashAtStep

SPLITS = ("train", "val", "test")
RAW = load_digits()
ROW_OF_PIXELS = {row.astype(np.int64).tobytes(): i for i, row in enumerate(RAW.data)}  # the 1,797 images are distinct


def _rows(dm: DigitsBagsDataModule, image: torch.Tensor) -> list[int]:
    """The scikit-learn rows of a bag's instances, found from their pixels alone (normalization undone)."""
    pixels = ((image.flatten(1) * dm.std[0] + dm.mean[0]) * 16).round().long().numpy()
    return [ROW_OF_PIXELS[row.tobytes()] for row in pixels]


def _bags(dm: DigitsBagsDataModule, split: str) -> list[tuple[list[int], dict]]:
    return [(_rows(dm, sample["image"]), sample) for sample in dm.datasets[split]]


@pytest.mark.parametrize(("positive_digit", "instances"), [(9, "features"), (3, "images")])
def test_bag_labels_and_instance_targets_are_the_raw_digits(positive_digit, instances):
    dm = DigitsBagsDataModule(positive_digit=positive_digit, instances=instances, num_train_bags=60)
    dm.setup()
    shape = (64,) if instances == "features" else (1, 8, 8)
    for split in SPLITS:
        for rows, sample in _bags(dm, split):
            digits = RAW.target[rows]
            assert sample["image"].shape == (len(rows), *shape) and sample["image"].dtype == torch.float32
            assert sample["target"].dtype == torch.int64 and sample["target"].dim() == 0
            assert int(sample["target"]) == int((digits == positive_digit).any())
            assert sample["instance_target"].tolist() == (digits == positive_digit).astype(int).tolist()
            assert len(set(rows)) == len(rows)  # no image twice in one bag


def test_splits_draw_their_bags_from_disjoint_images():
    dm = DigitsBagsDataModule()
    dm.setup()
    used = {split: {row for rows, _ in _bags(dm, split) for row in rows} for split in SPLITS}
    for split in SPLITS:
        assert used[split] <= set(dm.split_indices[split].tolist())
    assert not used["train"] & used["val"] and not used["train"] & used["test"] and not used["val"] & used["test"]
    assert sum(len(indices) for indices in dm.split_indices.values()) == len(RAW.target)


def _signature(dm: DigitsBagsDataModule) -> dict[str, list]:
    return {split: [(rows, int(sample["target"])) for rows, sample in _bags(dm, split)] for split in SPLITS}


def test_bags_are_a_function_of_the_seed():
    a, b, other = DigitsBagsDataModule(seed=0), DigitsBagsDataModule(seed=0), DigitsBagsDataModule(seed=1)
    torch.manual_seed(1)
    a.setup()
    torch.manual_seed(2)  # the global RNG plays no part
    b.setup()
    other.setup()
    assert _signature(a) == _signature(b)
    for split in SPLITS:
        assert _signature(other)[split] != _signature(a)[split]


def test_padded_batches_carry_the_instance_mask_of_the_bag_sizes():
    dm = DigitsBagsDataModule(batch_size=8, instances="images")
    dm.setup()
    for split, loader in (("train", dm.train_dataloader()), ("val", dm.val_dataloader())):
        batch = next(iter(loader))
        sizes = torch.tensor([len(dm.datasets[split][int(i)]["instance_target"]) for i in batch["index"]])
        mask = batch["instance_mask"]
        assert mask.dtype == torch.bool and mask.shape[0] == 8
        assert batch["image"].shape[:2] == mask.shape and batch["image"].shape[2:] == (1, 8, 8)
        assert torch.equal(mask.sum(1), sizes) and mask.shape[1] == sizes.max() and len(set(sizes.tolist())) > 1
        assert torch.equal(mask, torch.arange(mask.shape[1]) < sizes[:, None])  # real instances first
        assert not batch["image"][~mask].any() and (batch["instance_target"][~mask] == -1).all()
        for row, index in enumerate(batch["index"].tolist()):
            sample = dm.datasets[split][index]
            assert torch.equal(batch["image"][row, : sizes[row]], sample["image"])
            assert torch.equal(batch["instance_target"][row, : sizes[row]], sample["instance_target"])
            assert batch["target"][row] == sample["target"]


@pytest.mark.parametrize("fraction", [0.5, 0.2])
def test_the_positive_share_and_the_bag_sizes_follow_the_arguments(fraction):
    dm = DigitsBagsDataModule(positive_fraction=fraction, num_train_bags=300, mean_bag_size=12, std_bag_size=3)
    dm.setup()
    for split, count in (("train", 300), ("val", 100), ("test", 100)):
        targets = torch.stack([sample["target"] for sample in dm.datasets[split]])
        assert len(targets) == count and abs(targets.float().mean().item() - fraction) <= 0.01
    sizes = torch.tensor([len(sample["instance_target"]) for sample in dm.datasets["train"]]).float()
    assert abs(sizes.mean().item() - 12) < 0.5 and 2.5 < sizes.std().item() < 3.5
    assert sizes.min() >= 2 and sizes.max() <= 30
    fixed = DigitsBagsDataModule(mean_bag_size=5, std_bag_size=0, min_bag_size=5, max_bag_size=5)
    fixed.setup()
    assert {len(sample["instance_target"]) for sample in fixed.datasets["val"]} == {5}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"positive_digit": 10}, "positive_digit must be a digit 0..9"),
        ({"positive_digit": -1}, "positive_digit must be a digit 0..9"),
        ({"min_bag_size": 0}, "1 <= min_bag_size <= max_bag_size"),
        ({"min_bag_size": 8, "max_bag_size": 4, "mean_bag_size": 6}, "1 <= min_bag_size <= max_bag_size"),
        ({"mean_bag_size": 40}, r"mean_bag_size=40 must lie in \[min_bag_size, max_bag_size\] = \[2, 30\]"),
        ({"std_bag_size": -1}, "std_bag_size=-1 must be 0 or more"),
        ({"num_train_bags": 0}, "num_train_bags must be at least 1"),
        ({"num_test_bags": -3}, "num_test_bags must be at least 1"),
        ({"positive_fraction": 0.0}, r"positive_fraction .* must lie in \(0, 1\)"),
        ({"positive_fraction": 1.0}, r"positive_fraction .* must lie in \(0, 1\)"),
        (
            {"num_val_bags": 1},
            r"The val split would hold 1 bag\(s\), all negative .* at least 2 \(with positive_fraction=0.5\)\.$",
        ),
        (
            {"num_test_bags": 4, "positive_fraction": 0.9},
            r"test split would hold 4 bag\(s\), all positive .* or bring positive_fraction closer to 0.5",
        ),
        ({"num_train_bags": 10, "positive_fraction": 0.01}, r"train split .* raise num_train_bags to at least 51"),
        ({"instances": "pixels"}, "instances must be 'features'"),
        ({"val_fraction": 0.0}, "val_fraction=0.0 and test_fraction=0.15"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "sum below 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
    ],
)
def test_bad_arguments_are_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DigitsBagsDataModule(**kwargs)


def test_a_split_with_too_few_images_for_its_bags_says_what_to_change():
    dm = DigitsBagsDataModule(val_fraction=0.005, mean_bag_size=20, max_bag_size=30, std_bag_size=5)
    with pytest.raises(ValueError, match=r"the val split's digit images .* too few .* Raise val_fraction"):
        dm.setup()


def test_batch_size_one_serves_one_whole_bag_per_batch():
    dm = DigitsBagsDataModule(num_train_bags=30)
    assert dm.batch_size == 1 and dm.num_classes == 2
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochShuffleSampler)  # resume-exact order, sharded under DDP
    batches = list(loader)
    assert len(batches) == 30 and sorted(int(batch["index"]) for batch in batches) == list(range(30))
    for batch in batches:
        assert batch["image"].shape[0] == 1 and batch["instance_mask"].all() and batch["target"].shape == (1,)


class MeanPoolMIL(LightningModule):
    """Mean of a bag's real instances (``instance_mask``), then a linear layer: the smallest MIL model."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(64, 2)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).float()
        return self.head((image * weights).sum(1) / weights.sum(1))

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch["image"], batch["instance_mask"]), batch["target"])
        self.log("train/loss", loss, batch_size=len(batch["target"]))
        return loss

    def validation_step(self, batch, batch_idx):
        logits = self(batch["image"], batch["instance_mask"])
        self.log("val/acc", (logits.argmax(1) == batch["target"]).float().mean(), batch_size=len(batch["target"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_mean_pooling_model_trains_for_one_epoch():
    seed_everything(0)
    dm, model = DigitsBagsDataModule(num_train_bags=40, num_val_bags=20, batch_size=4), MeanPoolMIL()
    before = model.head.weight.detach().clone()
    trainer = Trainer(max_epochs=1, enable_progress_bar=False, logger=False, enable_checkpointing=False)
    trainer.fit(model, dm)
    assert trainer.global_step == 10 and not torch.equal(before, model.head.weight)
    assert torch.isfinite(trainer.callback_metrics["train/loss"]) and "val/acc" in trainer.callback_metrics


def test_padding_does_not_change_a_bags_mean_pooled_prediction():
    dm, model = DigitsBagsDataModule(batch_size=6), MeanPoolMIL()
    batch = next(iter(dm.val_dataloader()))
    padded = model(batch["image"], batch["instance_mask"])
    for row, index in enumerate(batch["index"].tolist()):
        image = dm.datasets["val"][index]["image"][None]
        torch.testing.assert_close(padded[row], model(image, torch.ones(image.shape[:2], dtype=torch.bool))[0])


class RecordBags(Callback):
    def __init__(self) -> None:
        self.seen: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen[trainer.global_step] = batch["index"].tolist()


def _fit(root, crash_at_step=None, ckpt_path=None, seed=0):
    seed_everything(0)
    record = RecordBags()
    callbacks = [record, ModelCheckpoint(dirpath=root, every_n_train_steps=2, save_last=True, save_top_k=-1)]
    if crash_at_step is not None:
        callbacks.append(CrashAtStep(crash_at_step))
    model = MeanPoolMIL()
    trainer = Trainer(
        max_epochs=2, default_root_dir=root, callbacks=callbacks, **{**QUIET, "enable_checkpointing": True}
    )
    dm = DigitsBagsDataModule(num_train_bags=24, num_val_bags=4, num_test_bags=4, batch_size=4, seed=seed)
    try:
        trainer.fit(model, dm, ckpt_path=ckpt_path)
    except RuntimeError as error:
        if "CRASH" not in str(error):
            raise
    return model, record


def test_a_run_stopped_mid_epoch_resumes_with_the_next_bags(tmp_path):
    full, full_record = _fit(tmp_path / "full")
    _fit(tmp_path / "part", crash_at_step=9)  # 6 batches an epoch: the last checkpoint is step 8, in epoch 1
    with pytest.warns(UserWarning, match="checkpoint's split is used"):
        resumed, record = _fit(tmp_path / "part", ckpt_path=tmp_path / "part" / "last.ckpt", seed=5)
    assert min(record.seen) == 8 and max(record.seen) == 11
    assert all(record.seen[step] == full_record.seen[step] for step in record.seen)
    torch.testing.assert_close(full.head.weight, resumed.head.weight, rtol=0, atol=0)


def test_the_state_rebuilds_the_bags_and_refuses_another_positive_digit(tmp_path):
    original = DigitsBagsDataModule(seed=0, num_train_bags=50)
    original.setup()
    torch.save(original.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    resumed = DigitsBagsDataModule(seed=3, num_train_bags=80)
    with pytest.warns(UserWarning, match="seed 0, num_train_bags 50"):
        resumed.load_state_dict(state)
    assert _signature(resumed) == _signature(original)
    with pytest.raises(ValueError, match="positive_digit=9 but this module has positive_digit=4"):
        DigitsBagsDataModule(positive_digit=4).load_state_dict(state)


def test_the_fingerprint_covers_which_images_make_each_bag(monkeypatch):
    original = DigitsBagsDataModule()
    original.setup()
    state = original.state_dict()
    draw = DigitsBagsDataModule._draw_bags

    def reversed_bags(self, split, labels, generator):  # the same bags and labels, instances in another order
        members, offsets = draw(self, split, labels, generator)
        return torch.cat([members[a:b].flip(0) for a, b in itertools.pairwise(offsets.tolist())]), offsets

    monkeypatch.setattr(DigitsBagsDataModule, "_draw_bags", reversed_bags)
    with pytest.raises(
        ValueError,
        match=r"not the data the checkpoint was made on \(the train split changed: the file list differs, "
        r"the content differs",
    ):
        DigitsBagsDataModule().load_state_dict(state)
