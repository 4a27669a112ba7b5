"""Your own (x, y) into GCDClassifier: GCDDataset's rows, the card's example as written, and named errors otherwise."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_regs.datamodules import DatasetDataModule, GCDDataset
from lightning_regs.functional import unique_by_index
from lightning_regs.tasks import GCDClassifier
from tests.helpers.doc_blocks import block, run_python

CARD = "docs/methods/lego_gcd.md"
FIT = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False}


def small_task(num_known: int = 2, num_novel: int = 2, **kwargs) -> GCDClassifier:
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, 8))
    return GCDClassifier(backbone, 8, num_known, num_novel, proj_hidden=16, proj_dim=4, **kwargs)


def test_gcd_dataset_labels_part_of_the_known_classes_and_nothing_else():
    y = torch.arange(60) % 5
    data = GCDDataset(torch.randn(60, 1, 4, 4), y, known_classes=[1, 3], labeled_fraction=0.25, seed=3)
    assert data.known_classes == [1, 3] and data.novel_classes == [0, 2, 4]
    assert set(y[data.labeled].tolist()) == {1, 3} and int(data.labeled.sum()) == 6  # round(0.25 · 12) of each
    assert torch.equal(data.targets, torch.where(data.labeled, y, -1))
    row = data[int(data.labeled.nonzero()[0])]
    assert row["image"].shape == (2, 1, 4, 4) and torch.equal(row["image"][0], row["image"][1])  # no augment: copies
    assert bool(row["labeled"]) and row["target"] == row["true_target"]
    assert torch.equal(GCDDataset(torch.randn(60, 1, 4, 4), y, [1, 3], 0.25, seed=3).labeled, data.labeled)  # seeded
    evaluation = data.evaluation_set()
    assert len(evaluation) == 54 and all(int(evaluation[i]["target"]) >= 0 for i in range(len(evaluation)))


def test_gcd_dataset_leaves_rows_of_unknown_class_unlabelled_and_unscored():
    y = torch.tensor([0, 0, 1, 1, -1, -1])
    data = GCDDataset(torch.randn(6, 3), y, known_classes=[0], labeled_fraction=1.0)
    assert data.labeled.tolist() == [True, True, False, False, False, False]
    assert len(data.evaluation_set()) == 2  # the two images of class 1; the class of the last two is unknown


@pytest.mark.parametrize(
    ("targets", "known", "match"),
    [
        (torch.arange(4).float(), [0], "one int class id per image"),
        (torch.arange(4), [7], r"known_classes must name classes present in targets.*\[7\] have no image"),
        (torch.arange(4), [], r"known_classes must be a list of distinct int ids.*not empty"),
    ],
)
def test_gcd_dataset_names_bad_arguments(targets, known, match):
    with pytest.raises(ValueError, match=match):
        GCDDataset(torch.randn(4, 2), targets, known_classes=known)


def test_the_cards_own_data_example_runs_as_written_and_scores_the_unlabelled_images(tmp_path, monkeypatch):
    code = block(CARD, "tested-own-data-example")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = run_python(code, CARD, "lego_gcd_own_data_example")
    trainer, train = namespace["trainer"], namespace["train"]
    assert trainer.global_step == 6  # 2 epochs of 96 // 32 batches
    assert {"gcd/all", "gcd/old", "gcd/new"} <= set(trainer.callback_metrics)
    assert int(train.labeled.sum()) == 24 and train.novel_classes == [3, 4, 5]
    assert len(train.evaluation_set()) == 72


def test_an_x_y_tensor_dataset_is_a_named_error_that_points_to_gcd_dataset():
    x, y = torch.randn(8, 1, 4, 4), torch.arange(8) % 4
    with pytest.raises(ValueError, match=r"two views per image.*GCDDataset\(x, y, known_classes="):
        Trainer(max_steps=1, **FIT).fit(small_task(), DataLoader(TensorDataset(x, y), batch_size=4))
    views = TensorDataset(x, x, torch.where(y < 2, y, -1))  # (view1, view2, y): not a layout the task reads
    with pytest.raises(TypeError, match=r"'image' \(B, 2, C, H, W\).*got a list of 3 items.*GCDDataset"):
        Trainer(max_steps=1, **FIT).fit(small_task(), DataLoader(views, batch_size=4))


def test_an_image_target_pair_of_two_views_trains_like_the_dict_batch():
    torch.manual_seed(0)
    image, target = torch.randn(4, 2, 1, 4, 4), torch.tensor([0, 1, -1, -1])
    torch.manual_seed(1)
    task = small_task()
    pair = task.compute_losses((image, target))[0]["loss"]
    as_dict = task.compute_losses({"image": image, "target": target})[0]["loss"]
    torch.testing.assert_close(pair, as_dict)


def test_evaluation_without_index_scores_every_batch_not_only_the_first():
    task = small_task()
    for _ in range(3):  # three (image, class) batches: positions must not repeat, or two batches are dropped
        task.validation_step((torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 3])), 0)
    index = torch.cat(task.evaluation_rows["val"].index)
    assert len(unique_by_index(index)[0]) == 12
    with pytest.raises(TypeError, match=r"evaluates on a dict batch with 'image' and 'target'.*got a tuple of 1"):
        task.validation_step((torch.randn(4, 1, 4, 4),), 0)


def test_gcd_dataset_rows_go_through_dataset_datamodule():
    x, y = torch.randn(32, 1, 4, 4), torch.arange(32) % 4
    train = GCDDataset(x, y, known_classes=[0, 1], augment=lambda image: image + 0.1 * torch.randn_like(image))
    data = DatasetDataModule(train, train.evaluation_set(), batch_size=8)
    trainer = Trainer(max_epochs=1, **FIT)
    trainer.fit(small_task(), data)
    assert trainer.global_step == 4 and "gcd/all" in trainer.callback_metrics
