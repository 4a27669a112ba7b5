"""The synthetic MVTec-format toy: the real layout, exact masks, byte-identical reruns, its DataModule and the floor."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from lightning_regs.cli import LightningRegsCLI
from lightning_regs.datamodules import mvtec_toy_render
from lightning_regs.datamodules.mvtec import MVTecADDataModule, scan_category
from lightning_regs.datamodules.mvtec_toy import (
    MANIFEST,
    TOY_CATEGORIES,
    TOY_DEFECTS,
    MVTecToyDataModule,
    render_toy_sample,
    write_mvtec_toy,
)
from lightning_regs.tasks.mean_image_baseline import MeanImageAnomalyBaseline
from tests.helpers.trainers import QUIET

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"num_train": 4, "num_test_good": 3, "num_test_defect": 2}


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The default toy (every category, default sizes) and the seconds it took to write."""
    root = tmp_path_factory.mktemp("toy")
    start = time.perf_counter()
    write_mvtec_toy(root)
    return root, time.perf_counter() - start


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_every_category_has_the_real_layout_and_passes_scan_category(toy):
    root, _ = toy
    assert sorted(p.name for p in root.iterdir()) == sorted([*TOY_CATEGORIES, MANIFEST])
    for category in TOY_CATEGORIES:
        train, test = scan_category(root / category, root)
        assert [p.name for p in train] == [f"{i:03d}.png" for i in range(40)]
        assert len(test) == 16 + 8 * len(TOY_DEFECTS)
        assert sorted({defect for _, _, defect in test}) == sorted(["good", *TOY_DEFECTS])
        for image, mask, defect in test:
            assert (mask is None) == (defect == "good")
            if mask is not None:
                assert mask == (root / category / "ground_truth" / defect / f"{image.stem}_mask.png").resolve()
            with Image.open(image) as opened:
                assert opened.mode == "RGB" and opened.size == (64, 64)


def test_masks_are_exactly_the_pixels_the_defect_changed(toy):
    root, _ = toy
    for category in TOY_CATEGORIES:
        for defect in TOY_DEFECTS:
            for index in range(8):
                image = _read(root / category / "test" / defect / f"{index:03d}.png")
                mask = _read(root / category / "ground_truth" / defect / f"{index:03d}_mask.png")
                sample = render_toy_sample(category, defect, index)  # the clean image the defect was pasted on
                assert np.array_equal(image, sample.image), (category, defect, index)
                changed = (image != sample.clean).any(-1)
                assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) == {0, 255}, (category, defect, index)
                assert np.array_equal(mask == 255, changed), (category, defect, index)
                assert 0 < changed.mean() < 0.1  # a defect, not the whole image
    broken = mask.copy()  # the check above can fail: one pixel off the mask is caught
    broken[np.unravel_index(np.argmax(mask), mask.shape)] = 0
    assert not np.array_equal(broken == 255, changed)


def test_good_images_are_their_renderings_and_vary_like_photographs(toy):
    root, _ = toy
    for category in TOY_CATEGORIES:
        train = np.stack([_read(root / category / "train" / "good" / f"{i:03d}.png") for i in range(40)])
        assert np.array_equal(train[5], render_toy_sample(category, "good", 5, "train").image)
        assert np.array_equal(
            _read(root / category / "test" / "good" / "003.png"), render_toy_sample(category, "good", 3).image
        )
        spread = train.astype(float).std(0).mean()  # normal images differ from one another (shift, lighting, noise)
        assert spread > 3, (category, spread)


def test_a_defect_that_changes_nothing_is_refused(monkeypatch):
    monkeypatch.setattr(mvtec_toy_render, "_paste", lambda defect, clean, *args: clean.astype(np.int16))
    with pytest.raises(RuntimeError, match="changed no pixel"):
        render_toy_sample("stripes", "spot")


def test_a_rerun_writes_byte_identical_files_fast(toy, tmp_path):
    root, first_seconds = toy
    start = time.perf_counter()
    write_mvtec_toy(tmp_path / "again")
    seconds = time.perf_counter() - start
    print(f"default toy written in {first_seconds:.2f} s, again in {seconds:.2f} s")
    assert max(first_seconds, seconds) < 5
    assert _files(tmp_path / "again") == _files(root)
    other = _files(write_mvtec_toy(tmp_path / "seed1", ["stripes"], seed=1, **SMALL))
    assert other["stripes/train/good/000.png"] != _files(root)["stripes/train/good/000.png"]


def test_an_image_does_not_depend_on_the_other_categories_or_the_counts(toy, tmp_path):
    root, _ = toy
    small = write_mvtec_toy(tmp_path, "digit", **SMALL)
    assert sorted(p.name for p in small.iterdir()) == ["digit", MANIFEST]
    for relative in ("train/good/003.png", "test/spot/001.png", "ground_truth/missing/001_mask.png"):
        assert (small / "digit" / relative).read_bytes() == (root / "digit" / relative).read_bytes()


def test_datamodule_writes_the_toy_in_prepare_data_and_yields_mvtec_batches(tmp_path):
    dm = MVTecToyDataModule(tmp_path / "toy", "speckle", batch_size=3, **SMALL)
    with pytest.raises(FileNotFoundError, match=r"prepare_data\(\)"):
        dm.setup("fit")
    dm.prepare_data()
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "toy").rglob("*")}
    dm.prepare_data()  # already there with these settings: left as it is
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "toy").rglob("*")} == written
    assert not list((tmp_path / "toy").glob(".*")), "no staging folder or lock file is left"
    shutil.copytree(tmp_path / "toy" / "speckle", tmp_path / "real" / "carpet")
    real = MVTecADDataModule(tmp_path / "real", "carpet", image_size=None, batch_size=3)
    for module in (dm, real):
        module.setup("fit")
    assert dm.defect_types == real.defect_types == TOY_DEFECTS and len(dm.datasets["test"]) == 3 + 3 * 2
    for name in ("train_dataloader", "test_dataloader"):
        for ours, theirs in zip(getattr(dm, name)(), getattr(real, name)(), strict=True):
            assert ours.keys() == theirs.keys()
            assert all(torch.equal(ours[key], theirs[key]) for key in ours), name
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (3, 3, 64, 64) and batch["mask"].shape == (3, 1, 64, 64)
    assert dm.hparams.num_train == 4 and dm.hparams.toy_seed == 0 and dm.num_classes == 2


def test_unknown_categories_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="unknown toy category 'bottle'; the toy has digit, speckle, stripes"):
        MVTecToyDataModule(tmp_path, "bottle")
    with pytest.raises(ValueError, match="write_mvtec_toy: unknown toy category 'wood'"):
        write_mvtec_toy(tmp_path, ["stripes", "wood"])
    assert not list(tmp_path.iterdir())  # refused before anything was written
    with pytest.raises(ValueError, match="Unknown MVTec AD category 'stripes'"):
        MVTecADDataModule(tmp_path, "stripes")  # the real data module still takes the real names only
    with pytest.raises(ValueError, match="MVTecToyDataModule: num_train must be an int >= 1, got 0"):
        MVTecToyDataModule(tmp_path, "digit", num_train=0)


def test_a_folder_written_with_other_settings_is_refused_unless_overwritten(tmp_path):
    write_mvtec_toy(tmp_path, ["stripes"], **SMALL)
    dm = MVTecToyDataModule(tmp_path, "stripes", **{**SMALL, "num_train": 5})
    with pytest.raises(FileExistsError, match="stripes exists but was not written with these settings"):
        dm.prepare_data()
    (tmp_path / "digit").mkdir()  # a folder the toy did not write
    with pytest.raises(FileExistsError, match=r"record in .*: None"):
        write_mvtec_toy(tmp_path, ["digit"], **SMALL)
    write_mvtec_toy(tmp_path, ["stripes"], overwrite=True, **{**SMALL, "num_train": 5})
    dm.prepare_data()
    assert len(list((tmp_path / "stripes" / "train" / "good").iterdir())) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digit", MANIFEST, "stripes"]


@pytest.fixture(scope="module")
def floor(toy, tmp_path_factory) -> dict[str, dict[str, float]]:
    """The mean-image floor's validation metrics (the test set, val_split='test') on each default toy category."""
    root, _ = toy
    results = {}
    for category in TOY_CATEGORIES:
        dm = MVTecToyDataModule(root, category, batch_size=32)
        trainer = Trainer(
            max_epochs=1, limit_train_batches=1, default_root_dir=tmp_path_factory.mktemp("floor"), **QUIET
        )
        start = time.perf_counter()
        trainer.fit(MeanImageAnomalyBaseline(), dm)
        results[category] = {key: float(value) for key, value in trainer.callback_metrics.items()}
        results[category]["seconds"] = time.perf_counter() - start
    return results


def test_the_mean_image_floor_is_neither_trivial_nor_impossible_on_the_toy(floor):
    for category, metrics in floor.items():
        print(
            f"{category}: image AUROC {metrics['val/image_auroc']:.4f}, pixel AUROC {metrics['val/pixel_auroc']:.4f}, "
            f"{metrics['val/num_images']:.0f} test images, fit in {metrics['seconds']:.2f} s"
        )
        assert metrics["val/num_images"] == 16 + 8 * len(TOY_DEFECTS)
        assert 0.55 < metrics["val/image_auroc"] < 0.95, category
        assert 0.8 < metrics["val/pixel_auroc"] < 1.0, category


def test_the_example_config_runs_the_floor_on_the_toy(floor, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-regs"])
    config = ROOT / "examples" / "mean_image_mvtec_toy.yaml"
    args = ["fit", "--config", str(config), f"--data.init_args.root={tmp_path / 'data'}"]
    args += [f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"]
    cli = LightningRegsCLI(args=[*args, "--trainer.enable_model_summary=false"])
    assert isinstance(cli.datamodule, MVTecToyDataModule) and cli.datamodule.category == "stripes"
    assert (tmp_path / "data" / "stripes" / "train" / "good" / "039.png").is_file()
    metrics = cli.trainer.callback_metrics
    for key in ("val/image_auroc", "val/pixel_auroc", "val/num_images"):  # the same data as the default toy
        assert float(metrics[key]) == pytest.approx(floor["stripes"][key], abs=1e-6), key
