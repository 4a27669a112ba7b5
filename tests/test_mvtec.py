import shutil
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from sklearn.metrics import roc_auc_score
from torchvision.transforms import v2

from lightning_regs.datamodules.mvtec import CATEGORIES, MVTecADDataModule
from lightning_regs.tasks.mean_image_baseline import MeanImageAnomalyBaseline
from tests.helpers.ddp import DDP_SPAWN_CPU
from tests.helpers.fake_datasets_medical import MVTEC_DEFECTS, MVTEC_SIZE, make_mvtec, mvtec_box, mvtec_fill
from tests.helpers.trainers import QUIET

RAW = {"image_size": None, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


@pytest.fixture
def mvtec_root(tmp_path):
    return make_mvtec(tmp_path / "mvtec")


def expected_test_samples(num_good=2, num_defect=2):
    """(fill, box or None, label) in the module's order: defect folders sorted, 'good' among them."""
    samples = []
    for folder in sorted(("good", *MVTEC_DEFECTS)):
        if folder == "good":
            samples += [(mvtec_fill("good", 0, i), None, 0) for i in range(num_good)]
        else:
            d = MVTEC_DEFECTS.index(folder)
            samples += [(mvtec_fill(folder, d, i), mvtec_box(d, i), 1) for i in range(num_defect)]
    return samples


def all_samples(loader):
    batches = list(loader)
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def test_lengths_labels_images_and_masks_are_what_was_written(mvtec_root):
    dm = MVTecADDataModule(mvtec_root, "bottle", batch_size=2, **RAW)
    dm.setup("fit")
    train = all_samples(dm.train_dataloader())
    assert sorted(train["index"].tolist()) == [0, 1, 2] and train["label"].sum() == 0
    fills = sorted(round(float(v) * 255) for v in train["image"][:, 0, 0, 0])
    assert fills == [mvtec_fill("train", 0, i) for i in range(3)] and train["mask"].sum() == 0
    test = all_samples(dm.test_dataloader())
    expected = expected_test_samples()
    assert len(dm.datasets["test"]) == len(expected) == 6
    assert test["index"].tolist() == list(range(6))
    assert test["label"].tolist() == test["target"].tolist() == [label for _, _, label in expected]
    assert test["image"].shape == (6, 3, *MVTEC_SIZE) and test["mask"].shape == (6, 1, *MVTEC_SIZE)
    assert test["mask"].dtype == torch.float32 and set(test["mask"].unique().tolist()) <= {0.0, 1.0}
    for position, (fill, box, _) in enumerate(expected):
        image, mask = test["image"][position], test["mask"][position, 0]
        expected_mask = torch.zeros(MVTEC_SIZE)
        if box is not None:
            expected_mask[box] = 1
        torch.testing.assert_close(mask, expected_mask)
        assert round(float(image[:, -1, -1].mean()) * 255) == fill  # corner: outside every box
        torch.testing.assert_close(image[0], image[2])  # grey test/good PNGs come out as RGB
    assert dm.defect_types == MVTEC_DEFECTS and dm.num_classes == 2 and dm.class_names == ("good", "anomalous")
    assert dm.datasets["val"] is dm.datasets["test"]  # the documented default: validate on the test set


def test_resize_uses_nearest_for_masks_and_imagenet_normalization(mvtec_root):
    dm = MVTecADDataModule(mvtec_root, "bottle", image_size=(10, 12), batch_size=8)
    test = all_samples(dm.test_dataloader())
    assert test["image"].shape == (6, 3, 10, 12) and test["mask"].shape == (6, 1, 10, 12)
    assert set(test["mask"].unique().tolist()) == {0.0, 1.0}
    for position, (fill, box, _) in enumerate(expected_test_samples()):
        full = torch.zeros(1, *MVTEC_SIZE, dtype=torch.uint8)
        if box is not None:
            full[0][box] = 1
        resized = v2.functional.resize(full, [10, 12], interpolation=v2.InterpolationMode.NEAREST)
        torch.testing.assert_close(test["mask"][position], resized.float())
        corner = test["image"][position, :, -1, -1]
        mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
        torch.testing.assert_close(corner, (fill / 255 - mean) / std, atol=2e-2, rtol=0)


def test_masks_pair_by_stem_not_by_sorted_order(tmp_path):
    root = make_mvtec(tmp_path, num_defect=0)
    images, masks = root / "bottle/test/broken_large", root / "bottle/ground_truth/broken_large"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    # sorted images: 1, 1_0; sorted masks: 1_0_mask, 1_mask: pairing by sorted order would swap them
    template = root / "bottle/test/good/000.png"
    for stem, box_rows in (("1", slice(0, 3)), ("1_0", slice(10, 20))):
        shutil.copyfile(template, images / f"{stem}.png")
        mask = torch.zeros(MVTEC_SIZE, dtype=torch.uint8)
        mask[box_rows] = 255
        Image.fromarray(mask.numpy()).save(masks / f"{stem}_mask.png")
    dm = MVTecADDataModule(root, "bottle", batch_size=8, **RAW)
    dm.setup("test")
    items = dm.datasets["test"].items
    anomalous = {image.stem: mask.stem for image, mask, label in items if label == 1}
    assert anomalous == {"1": "1_mask", "1_0": "1_0_mask"}
    test = all_samples(dm.test_dataloader())
    by_stem = {image.stem: position for position, (image, _, _) in enumerate(items)}
    assert test["mask"][by_stem["1"], 0, :3].all() and not test["mask"][by_stem["1"], 0, 3:].any()
    assert test["mask"][by_stem["1_0"], 0, 10:].all() and not test["mask"][by_stem["1_0"], 0, :10].any()


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: _remove(r / "bottle/ground_truth/contamination/001_mask.png"), "no mask for .*001.png"),
        (lambda r: _remove(r / "bottle/test/broken_large/000.png"), "mask .*000_mask.png has no test image"),
        (lambda r: _remove(r / "bottle/ground_truth/broken_large"), "ground_truth/broken_large is missing"),
        (lambda r: _remove(r / "bottle/train"), "no training images"),
        (lambda r: _remove(r / "bottle/test/good"), "test/good is missing"),
        (lambda r: _remove(r / "bottle/test"), "test is missing"),
        (lambda r: (r / "bottle/ground_truth/scratch").mkdir(), "ground_truth/scratch has no matching test folder"),
        (lambda r: [_remove(p) for p in (r / "bottle/test/contamination").iterdir()], "contamination holds no .png"),
    ],
)
def test_every_malformed_layout_names_its_problem_and_the_layout(mvtec_root, change, message):
    change(mvtec_root)
    with pytest.raises(ValueError, match=message) as error:
        MVTecADDataModule(mvtec_root, "bottle").setup("fit")
    assert "<root>/<category>/ground_truth/<defect>/000_mask.png" in str(error.value)
    assert "CC BY-NC-SA 4.0" in str(error.value) and "mvtec.com" in str(error.value)


def test_missing_data_and_wrong_root_give_instructions(mvtec_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)bottle not found. .*nowhere does not exist.*mvtec.com"):
        MVTecADDataModule(tmp_path / "nowhere", "bottle").setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no MVTec AD category folder"):
        MVTecADDataModule(tmp_path / "empty", "bottle").setup("fit")
    with pytest.raises(FileNotFoundError, match="pass its parent"):
        MVTecADDataModule(mvtec_root / "bottle", "bottle").setup("fit")
    with pytest.raises(FileNotFoundError, match=r"holds the categories \['bottle'\]"):
        MVTecADDataModule(mvtec_root, "cable").setup("fit")
    with pytest.raises(ValueError, match=r"Unknown MVTec AD category 'bottles'.*zipper"):
        MVTecADDataModule(mvtec_root, "bottles")
    assert len(CATEGORIES) == 15


def test_a_mask_of_another_size_is_named_when_loaded(mvtec_root):
    Image.fromarray(torch.zeros(5, 5, dtype=torch.uint8).numpy()).save(
        mvtec_root / "bottle/ground_truth/broken_large/000_mask.png"
    )
    dm = MVTecADDataModule(mvtec_root, "bottle", **RAW)
    dm.setup("test")
    with pytest.raises(ValueError, match=r"000_mask.png is \(5, 5\) but image .*000.png is \(20, 24\)"):
        next(iter(dm.test_dataloader()))


def test_from_test_split_is_seeded_stratified_and_restored_from_state(mvtec_root):
    root = make_mvtec(mvtec_root, num_good=4, num_defect=3)
    dm = MVTecADDataModule(root, "bottle", val_split="from_test", val_fraction=0.5, seed=3, **RAW)
    dm.setup("fit")
    val, test = dm.split_indices["val"], dm.split_indices["test"]
    assert sorted(val.tolist() + test.tolist()) == list(range(10))
    for split, indices in (("val", val), ("test", test)):
        assert set(dm.datasets[split].labels.tolist()) == {0, 1}
        assert all_samples(getattr(dm, f"{split}_dataloader")())["index"].tolist() == list(range(len(indices)))
    state = dm.state_dict()
    path = root / "state.pt"
    torch.save(state, path)
    restored = MVTecADDataModule(root, "bottle", val_split="from_test", seed=99, **RAW)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.split_indices["val"].tolist() == val.tolist()
    assert [i[0] for i in restored.datasets["test"].items] == [i[0] for i in dm.datasets["test"].items]
    other = MVTecADDataModule(root, "bottle", val_split="from_test", seed=4, **RAW)
    other.setup("fit")
    assert other.split_indices["val"].tolist() != val.tolist()
    assert dm.draw_split(torch.tensor([1] * 6 + [0] * 4))["val"].tolist() == val.tolist()
    _remove(root / "bottle/test/good/000.png")
    changed = MVTecADDataModule(root, "bottle", val_split="from_test", seed=3, **RAW)
    with pytest.raises(ValueError, match=r"drawn over 10 test images but .* now holds 9"):
        changed.load_state_dict(state)


def test_a_transform_from_the_user_replaces_the_default(mvtec_root):
    transform = v2.Compose([v2.Resize((8, 8), antialias=True), v2.ToDtype(torch.float32, scale=True)])
    dm = MVTecADDataModule(mvtec_root, "bottle", transform=transform)
    sample = all_samples(dm.test_dataloader())
    assert sample["image"].shape[-2:] == (8, 8) and float(sample["image"].max()) <= 1.0


def test_baseline_metrics_equal_an_independent_computation(mvtec_root, tmp_path):
    dm = MVTecADDataModule(mvtec_root, "bottle", batch_size=2, **RAW)
    # one training batch of two images: the mean still covers all three (read apart from the fit loop)
    trainer = Trainer(max_epochs=1, limit_train_batches=1, default_root_dir=tmp_path, **QUIET)
    task = MeanImageAnomalyBaseline()
    trainer.fit(task, dm)
    val_pixel_auroc = float(trainer.callback_metrics["val/pixel_auroc"])
    trainer.test(task, dm, verbose=False)
    dm.setup("fit")
    train, test = all_samples(dm.train_dataloader()), all_samples(dm.test_dataloader())
    maps = (test["image"] - train["image"].mean(0)).abs().mean(1)
    scores = maps.flatten(1).mean(1)
    metrics = trainer.callback_metrics
    assert float(metrics["test/image_auroc"]) == pytest.approx(roc_auc_score(test["label"], scores), abs=1e-6)
    expected_pixel = roc_auc_score(test["mask"].flatten(), maps.flatten())
    assert float(metrics["test/pixel_auroc"]) == pytest.approx(expected_pixel, abs=1e-6)
    assert val_pixel_auroc == pytest.approx(expected_pixel, abs=1e-6)  # the mean was ready before validation
    trainer.save_checkpoint(tmp_path / "baseline.ckpt")
    checkpoint = torch.load(tmp_path / "baseline.ckpt", weights_only=True)  # data module hparams: builtins only
    assert checkpoint["datamodule_hyper_parameters"]["root"] == str(mvtec_root)
    loaded = MeanImageAnomalyBaseline.load_from_checkpoint(tmp_path / "baseline.ckpt", weights_only=True)
    torch.testing.assert_close(loaded.mean_image, train["image"].mean(0))


class RecordingBaseline(MeanImageAnomalyBaseline):
    """Saves the indices each rank tested, to check what DistributedSampler did."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.seen: list[torch.Tensor] = []

    def test_step(self, batch, batch_idx):
        self.seen.append(batch["index"])
        super().test_step(batch, batch_idx)

    def on_test_epoch_end(self):
        torch.save(torch.cat(self.seen), Path(self.out_dir) / f"rank{self.global_rank}.pt")
        super().on_test_epoch_end()


def _zero_mean(task: MeanImageAnomalyBaseline) -> MeanImageAnomalyBaseline:
    task.mean_image = torch.zeros(3, 12, 12)  # a fitted mean (zero): the floor refuses to test without one
    return task


@pytest.mark.slow
def test_ddp_auroc_after_dedupe_equals_single_process(tmp_path):
    root = make_mvtec(tmp_path / "data", num_good=3, num_defect=2)  # 7 test images: DistributedSampler pads one
    dm = MVTecADDataModule(root, "bottle", batch_size=2, image_size=12)
    single = Trainer(default_root_dir=tmp_path, **QUIET)
    single.test(_zero_mean(RecordingBaseline(str(tmp_path))), dm, verbose=False)
    expected = {key: float(value) for key, value in single.callback_metrics.items()}
    (tmp_path / "rank0.pt").unlink()
    ddp = Trainer(default_root_dir=tmp_path, **{**QUIET, **DDP_SPAWN_CPU})
    ddp.test(
        _zero_mean(RecordingBaseline(str(tmp_path))), MVTecADDataModule(root, "bottle", batch_size=2, image_size=12)
    )
    seen = torch.cat([torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)])
    assert len(seen) == 8 and sorted(set(seen.tolist())) == list(range(7))  # 7 samples + 1 padded duplicate
    assert expected["test/num_images"] == float(ddp.callback_metrics["test/num_images"]) == 7
    for key in ("test/image_auroc", "test/pixel_auroc"):
        assert float(ddp.callback_metrics[key]) == pytest.approx(expected[key], abs=1e-7), key


def _exact_train_mean(dm: MVTecADDataModule) -> torch.Tensor:
    dm.setup("fit")
    images = torch.stack([dm.datasets["train"][i]["image"] for i in range(len(dm.datasets["train"]))])
    return images.double().mean(0).float()


@pytest.mark.slow
def test_ddp_fit_counts_every_training_image_once_and_equals_single_process(tmp_path):
    # 3 training images on 2 ranks: DistributedSampler pads one; 7 test images: it pads one there too
    root = make_mvtec(tmp_path / "data", num_train=3, num_good=3, num_defect=2)
    single = Trainer(max_epochs=1, default_root_dir=tmp_path, **QUIET)
    single_task = MeanImageAnomalyBaseline()
    single.fit(single_task, MVTecADDataModule(root, "bottle", batch_size=2, image_size=12))
    expected = {key: float(value) for key, value in single.callback_metrics.items()}
    ddp = Trainer(max_epochs=1, default_root_dir=tmp_path, **{**QUIET, **DDP_SPAWN_CPU})
    task = MeanImageAnomalyBaseline()
    ddp.fit(task, MVTecADDataModule(root, "bottle", batch_size=2, image_size=12))
    exact = _exact_train_mean(MVTecADDataModule(root, "bottle", batch_size=2, image_size=12))
    torch.testing.assert_close(single_task.mean_image, exact)
    torch.testing.assert_close(task.mean_image, exact)  # rank 0's weights, handed back by ddp_spawn
    assert float(ddp.callback_metrics["val/num_images"]) == expected["val/num_images"] == 7
    for key in ("val/image_auroc", "val/pixel_auroc"):
        assert float(ddp.callback_metrics[key]) == pytest.approx(expected[key], abs=1e-7), key
