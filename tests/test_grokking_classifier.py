"""GrokkingClassifier's loss and the long-epoch digits subset (the grokking example runs in test_example_configs.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_regs.datamodules import EpochShuffleSampler
from lightning_regs.datamodules.digits_subset import DigitsSubsetDataModule
from lightning_regs.models import MLP
from lightning_regs.tasks.grokking_classifier import GrokkingClassifier


def test_mse_on_one_hot_targets_is_the_closed_form():
    torch.manual_seed(0)
    task = GrokkingClassifier(MLP(in_features=64, num_classes=10, width=8), num_classes=10)
    image, target = torch.randn(5, 1, 8, 8), torch.tensor([0, 3, 9, 3, 1])
    logits = task(image)
    expected = ((logits - torch.eye(10)[target]) ** 2).sum() / (5 * 10)
    torch.testing.assert_close(task.training_step({"image": image, "target": target}, 0)["loss"], expected)
    soft = torch.softmax(torch.randn(5, 10), dim=1)
    torch.testing.assert_close(
        task.training_step({"image": image, "target": soft}, 0)["loss"], F.mse_loss(logits, soft)
    )
    # the recipe's defaults: AdamW, lr 1e-3, weight decay 0.01, constant rate
    assert task.hparams.optimizer == "adamw" and task.hparams.lr == 1e-3 and task.hparams.weight_decay == 0.01


def test_digits_subset_has_1000_training_digits_and_long_reproducible_epochs():
    dm = DigitsSubsetDataModule(steps_per_epoch=7, batch_size=200, val_fraction=0.4435, test_fraction=0.0)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 1000 and len(dm.datasets["val"]) == 797
    assert len(dm.train_dataloader()) == 7
    sampler = EpochShuffleSampler(1000, seed=0, length=1400)
    first = list(sampler)
    assert sorted(first[:1000]) == list(range(1000)) and first == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
