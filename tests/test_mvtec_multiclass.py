"""Multi-class MVTec (one DataModule over several categories): batches, splits, and per-category metrics that equal
each category evaluated alone, for the floor, INP-Former and MuSc."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_regs.batch import CATEGORY, INDEX, LABEL
from lightning_regs.datamodules.mvtec import MVTecADDataModule
from lightning_regs.datamodules.mvtec_toy import MVTecToyDataModule, write_mvtec_toy
from lightning_regs.tasks.anomaly_evaluation import METRICS, AnomalyEvaluation
from lightning_regs.tasks.inp_former import INPFormer
from lightning_regs.tasks.mean_image_baseline import MeanImageAnomalyBaseline
from lightning_regs.tasks.musc import MuScZeroShot
from tests.helpers.trainers import QUIET

TOY = {"num_train": 3, "num_test_good": 4, "num_test_defect": 1, "batch_size": 3}  # 7 test images per category
BOTH = ["stripes", "digit"]
TINY_INP = {"encoder": "efficientnet_lite0", "encoder_weights": None, "encoder_layers": [1, 2], "num_decoder_blocks": 2}


def _toy(root: Path, category: str | list[str], **kwargs) -> MVTecToyDataModule:
    return MVTecToyDataModule(root, category, **{**TOY, **kwargs})


def _all(loader) -> dict[str, torch.Tensor]:
    batches = list(loader)
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def test_a_list_of_categories_concatenates_them_and_tags_each_image(tmp_path):
    dm = _toy(tmp_path, BOTH)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.category_names == ("stripes", "digit")
    train, test = _all(dm.train_dataloader()), _all(dm.test_dataloader())
    assert sorted(train[CATEGORY].tolist()) == [0] * 3 + [1] * 3
    assert test[INDEX].tolist() == list(range(14)) and test[CATEGORY].tolist() == [0] * 7 + [1] * 7
    for category, name in enumerate(BOTH):  # each category's part is that category's own test set, in its order
        alone = _toy(tmp_path, name)
        alone.setup("test")
        single = _all(alone.test_dataloader())
        part = test[CATEGORY] == category
        assert torch.equal(test["image"][part], single["image"]) and torch.equal(test[LABEL][part], single[LABEL])
        assert single[CATEGORY].tolist() == [0] * 7


def test_from_test_split_keeps_both_labels_of_every_category(tmp_path):
    dm = _toy(tmp_path, BOTH, val_split="from_test", num_test_defect=2)
    dm.prepare_data()
    dm.setup("fit")
    for split in ("val", "test"):
        data = dm.datasets[split]
        pairs = {(int(c), int(lab)) for c, lab in zip(data.categories, data.labels, strict=True)}
        assert pairs == {(0, 0), (0, 1), (1, 0), (1, 1)}, split
    single = _toy(tmp_path, "stripes", val_split="from_test", num_test_defect=2)
    single.setup("fit")  # one category: the split drawn as before the multi-class option (same generator order)
    labels = single.datasets["val"].labels
    assert single.draw_split(torch.cat([labels, single.datasets["test"].labels]))["val"].numel() == labels.numel()


@pytest.mark.parametrize(
    ("category", "words"),
    [(["stripes", "stripes"], "twice"), ([], "non-empty list"), (["stripes", "bottle"], "unknown toy category")],
)
def test_bad_category_lists_are_named_errors(tmp_path, category, words):
    with pytest.raises(ValueError, match=words):
        _toy(tmp_path, category)


def test_real_data_module_names_a_missing_category_of_the_list(tmp_path):
    (tmp_path / "bottle").mkdir()
    dm = MVTecADDataModule(tmp_path, ["bottle", "cable"], image_size=16)
    with pytest.raises(FileNotFoundError, match="cable not found"):
        dm.setup("test")
    with pytest.raises(ValueError, match="Unknown MVTec AD category 'stripes'"):
        MVTecADDataModule(tmp_path, ["bottle", "stripes"])


def test_evaluation_groups_equal_each_group_evaluated_alone():
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1, 0])
    groups = torch.tensor([0, 0, 0, 0, 2, 2, 2, 2, 2])
    masks = torch.zeros(9, 6, 6)
    masks[labels == 1, 1:3, 2:5] = 1
    maps = torch.rand(9, 6, 6, generator=generator) + masks * torch.rand(9, 1, 1, generator=generator)
    scores = maps.flatten(1).amax(1)
    grouped = AnomalyEvaluation()
    grouped.update(scores[:5], labels[:5], maps[:5], masks[:5], torch.arange(5), groups[:5])
    grouped.update(scores[5:], labels[5:], maps[5:], masks[5:], torch.arange(5, 9), groups[5:])
    result = grouped.compute()
    assert set(result["per_group"]) == {0, 2} and float(result["num_images"]) == 9
    for group in (0, 2):
        chosen = groups == group
        alone = AnomalyEvaluation()
        alone.update(scores[chosen], labels[chosen], maps[chosen], masks[chosen], torch.arange(int(chosen.sum())))
        expected = alone.compute()
        for name in METRICS:
            assert float(result["per_group"][group][name]) == pytest.approx(float(expected[name])), name
    for name in METRICS:
        mean = (result["per_group"][0][name] + result["per_group"][2][name]) / 2
        assert float(result[name]) == pytest.approx(float(mean)), name
    with pytest.raises(ValueError, match="groups must be"):
        grouped.update(scores[:2], labels[:2], maps[:2], masks[:2], torch.arange(2), torch.tensor([0.5, 1.0]))


def _tested(task, datamodule, root: Path) -> dict[str, float]:
    trainer = Trainer(default_root_dir=root, accelerator="cpu", **QUIET)
    trainer.test(task, datamodule, verbose=False)
    return {key: float(value) for key, value in trainer.callback_metrics.items()}


def _check_per_category(multi: dict[str, float], alone: dict[str, dict[str, float]], tolerance: float) -> None:
    assert multi["test/num_images"] == sum(a["test/num_images"] for a in alone.values())
    for name in METRICS:
        for category, metrics in alone.items():
            assert multi[f"test/{category}/{name}"] == pytest.approx(metrics[f"test/{name}"], abs=tolerance), name
        expected = sum(metrics[f"test/{name}"] for metrics in alone.values()) / len(alone)
        assert multi[f"test/{name}"] == pytest.approx(expected, abs=tolerance), name


def test_musc_scores_each_category_against_its_own_images_only(tmp_path):
    task = MuScZeroShot("torchvision:resnet18", encoder_weights=None, layers=[1, 2], degrees=[1, 3])
    multi = _tested(task, _toy(tmp_path / "data", BOTH), tmp_path)
    alone = {name: _tested(task, _toy(tmp_path / "data", name), tmp_path) for name in BOTH}
    _check_per_category(multi, alone, 1e-5)


def test_multi_class_inp_former_trains_on_every_category_and_reports_each(tmp_path):
    seed_everything(0)
    task = INPFormer(**TINY_INP)
    trainer = Trainer(default_root_dir=tmp_path, accelerator="cpu", max_steps=2, **QUIET)
    trainer.fit(task, _toy(tmp_path / "data", BOTH))
    multi = _tested(task, _toy(tmp_path / "data", BOTH), tmp_path)
    alone = {name: _tested(task, _toy(tmp_path / "data", name), tmp_path) for name in BOTH}
    _check_per_category(multi, alone, 1e-5)


def test_the_floor_reports_per_category_too(tmp_path):
    task = MeanImageAnomalyBaseline()
    Trainer(default_root_dir=tmp_path, accelerator="cpu", max_epochs=1, **QUIET).fit(
        task, _toy(tmp_path / "data", BOTH)
    )
    multi = _tested(task, _toy(tmp_path / "data", BOTH), tmp_path)
    assert {f"test/{c}/image_auroc" for c in BOTH} <= set(multi)


def test_a_fit_shortened_below_its_validation_interval_warns_that_nothing_was_evaluated(tmp_path):
    task = MeanImageAnomalyBaseline()
    trainer = Trainer(default_root_dir=tmp_path, accelerator="cpu", max_epochs=1, check_val_every_n_epoch=2, **QUIET)
    with pytest.warns(UserWarning, match=r"without a validation run \(check_val_every_n_epoch=2\)"):
        trainer.fit(task, _toy(tmp_path / "data", "stripes"))
    validated = Trainer(default_root_dir=tmp_path, accelerator="cpu", max_epochs=1, **QUIET)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        validated.fit(MeanImageAnomalyBaseline(), _toy(tmp_path / "data", "stripes"))
    assert not [w for w in caught if "without a validation run" in str(w.message)]


def test_your_own_category_folder_in_the_mvtec_layout_is_accepted_by_name(tmp_path):
    write_mvtec_toy(tmp_path, ["digit"], num_train=2, num_test_good=2, num_test_defect=1)
    (tmp_path / "digit").rename(tmp_path / "my_parts")
    dm = MVTecADDataModule(tmp_path, ["my_parts"], image_size=None, batch_size=4)
    dm.setup("test")
    assert dm.category_names == ("my_parts",) and len(dm.datasets["test"]) == 5
    with pytest.raises(ValueError, match=r"Unknown MVTec AD category 'other'.*or a folder of .* \(.*other is none\)"):
        MVTecADDataModule(tmp_path, "other")
    with pytest.raises(ValueError, match="unknown toy category 'my_parts'"):
        MVTecToyDataModule(tmp_path, "my_parts")  # the toy writes its own three categories only
