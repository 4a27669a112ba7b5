import math
import warnings

import pytest
import torch
from lightning.pytorch import Trainer

from lightning_regs.datamodules.mvtec import MVTecADDataModule
from lightning_regs.functional.anomaly import image_auroc, pixel_auroc
from lightning_regs.functional.anomaly_metrics import (
    aupro,
    average_precision,
    f1_max,
    pixel_average_precision,
    pixel_f1_max,
)
from lightning_regs.tasks import AnomalyEvaluation, MeanImageAnomalyBaseline
from lightning_regs.tasks.anomaly_evaluation import METRICS
from tests.helpers.ddp import run_in_ddp
from tests.helpers.fake_datasets_medical import make_mvtec
from tests.helpers.trainers import QUIET

SIZE = (9, 7)


def make_set(seed: int = 0, num_images: int = 11) -> dict[str, torch.Tensor]:
    """A small evaluation set: good images (empty masks) and defective ones with a few regions each."""
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.arange(num_images) % 3 != 0).long()
    masks = (torch.rand(num_images, 1, *SIZE, generator=generator) > 0.8) & labels.bool()[:, None, None, None]
    maps = torch.randn(num_images, 1, *SIZE, generator=generator) + 1.5 * masks
    return {
        "scores": maps.flatten(1).amax(1) + 0.5 * torch.randn(num_images, generator=generator),
        "labels": labels,
        "maps": maps,
        "masks": masks.float(),  # as the MVTec batches carry them
        "index": torch.arange(num_images) + 100,
    }


def update(metric: AnomalyEvaluation, data: dict[str, torch.Tensor], rows) -> None:
    rows = torch.as_tensor(rows)
    metric.update(**{key: value[rows] for key, value in data.items()})


def functional_values(data: dict[str, torch.Tensor]) -> dict[str, float]:
    scores, labels, maps, masks = data["scores"].double(), data["labels"], data["maps"], data["masks"]
    return {
        "image_auroc": float(image_auroc(scores, labels)),
        "image_ap": float(average_precision(scores, labels)),
        "image_f1_max": float(f1_max(scores, labels).value),
        "image_f1_threshold": float(f1_max(scores, labels).threshold),
        "pixel_auroc": float(pixel_auroc(maps, masks)),
        "pixel_ap": float(pixel_average_precision(maps, masks)),
        "pixel_f1_max": float(f1_max(maps.flatten(), masks.flatten()).value),
        "pixel_f1_threshold": float(f1_max(maps.flatten(), masks.flatten()).threshold),
        "pixel_aupro": float(aupro(maps, masks)),
        "num_images": float(len(labels)),
    }


def test_values_equal_the_functional_ones_on_the_same_inputs():
    data = make_set()
    metric = AnomalyEvaluation()
    for rows in (range(0, 4), range(4, 5), range(5, 11)):  # batches of different sizes
        update(metric, data, list(rows))
    result = metric.compute()
    assert set(METRICS) <= set(result) and all(value.dtype == torch.float64 for value in result.values())
    assert {key: float(value) for key, value in result.items()} == functional_values(data)  # identical, not close
    assert 0 < float(result["pixel_aupro"]) < 1 and 0 < float(result["image_ap"]) < 1
    binned = AnomalyEvaluation(pixel_auroc_bins=16, fpr_limit=0.1)
    update(binned, data, range(11))
    other = binned.compute()
    assert float(other["pixel_auroc"]) == float(pixel_auroc(data["maps"], data["masks"], num_bins=16))
    assert float(other["pixel_aupro"]) == float(aupro(data["maps"], data["masks"], fpr_limit=0.1))
    assert float(other["pixel_ap"]) == float(result["pixel_ap"])  # exact whatever the AUROC's bins


def test_duplicated_indices_are_counted_once_in_any_order():
    data = make_set(1)
    expected = functional_values(data)
    metric = AnomalyEvaluation()
    update(metric, data, [7, 0, 3, 3])
    update(metric, data, [10, 1, 2, 4, 5, 6])
    update(metric, data, [8, 9, 0, 1])  # padded repeats, as DistributedSampler adds them
    assert {key: float(value) for key, value in metric.compute().items()} == expected
    metric.reset()
    update(metric, data, range(11))
    assert float(metric.compute()["num_images"]) == 11


def test_a_duplicate_must_carry_the_same_sample():
    data = make_set(2)
    for key, change, tolerance, message in (
        ("scores", 1e-3, 1e-4, "different scores"),
        ("maps", 1.0, 1e-4, "different maps"),
        ("labels", None, 1e-4, "different labels"),
        ("masks", None, 1e-4, "different masks"),
        ("scores", 1e-12, 0.0, "different scores"),  # duplicate_tolerance=0: identity (scores kept in float64)
    ):
        metric = AnomalyEvaluation(duplicate_tolerance=tolerance)
        update(metric, data, range(11))
        repeat = {name: value[[4]].clone() for name, value in data.items()}
        repeat["scores"] = repeat["scores"].double()
        if change is None:
            repeat[key] = 1 - repeat[key]
        else:
            repeat[key].view(-1)[0] += change
        metric.update(**repeat)
        with pytest.raises(ValueError, match=rf"sample index 104 was evaluated twice with {message}"):
            metric.compute()
    metric = AnomalyEvaluation()  # within the tolerance (another rank's kernels): the first one is kept
    update(metric, data, range(11))
    repeat = {name: value[[4]].clone() for name, value in data.items()}
    repeat["scores"] += 1e-6
    metric.update(**repeat)
    assert float(metric.compute()["image_auroc"]) == functional_values(data)["image_auroc"]


def test_undefined_metrics_are_nan_with_one_warning():
    data = make_set(3)
    good = [0, 3, 6, 9]
    metric = AnomalyEvaluation()
    update(metric, data, good)
    with pytest.warns(UserWarning, match=r"undefined, returned as NaN: image_\* \(0 of 4 images.*pixel_\* \(0 of"):
        result = metric.compute()
    assert all(math.isnan(float(result[name])) for name in METRICS) and float(result["num_images"]) == 4
    quiet = AnomalyEvaluation(warn_undefined=False)
    defective = {**data, "masks": torch.ones_like(data["masks"])}  # every pixel anomalous: no FPR, no AUROC
    update(quiet, defective, range(11))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = quiet.compute()
    assert math.isnan(float(result["pixel_auroc"])) and math.isnan(float(result["pixel_aupro"]))
    assert float(result["pixel_ap"]) == float(result["pixel_f1_max"]) == 1.0
    assert float(result["image_auroc"]) == functional_values(data)["image_auroc"]
    with pytest.raises(ValueError, match="no sample was added"), pytest.warns(UserWarning, match="before the"):
        AnomalyEvaluation().compute()


def test_states_live_on_cpu_in_compact_dtypes():
    data = make_set(4)
    metric = AnomalyEvaluation()
    update(metric, data, range(11))
    assert [metric.maps[0].dtype, metric.masks[0].dtype, metric.index[0].dtype] == [
        torch.float32,
        torch.uint8,
        torch.long,
    ]
    per_image = sum(state[0][0].numel() * state[0].element_size() for state in metric.metric_state.values())
    assert per_image == 5 * SIZE[0] * SIZE[1] + 21  # the docstring's 5·H·W + 21 bytes
    assert all(state[0].device.type == "cpu" for state in metric.metric_state.values())


def test_update_and_argument_errors_are_named():
    data = make_set(5)
    metric = AnomalyEvaluation()
    with pytest.raises(ValueError, match="one score, label and index per image"):
        metric.update(data["scores"][:3], data["labels"][:2], data["maps"][:2], data["masks"][:2], data["index"][:2])
    with pytest.raises(ValueError, match="must both be"):
        metric.update(data["scores"], data["labels"], data["maps"][..., :5], data["masks"], data["index"])
    with pytest.raises(ValueError, match="masks must be 0"):
        metric.update(data["scores"], data["labels"], data["maps"], data["masks"] * 2, data["index"])
    with pytest.raises(ValueError, match="maps hold NaN or infinite"):
        metric.update(data["scores"], data["labels"], data["maps"] / 0, data["masks"], data["index"])
    update(metric, data, [0])
    with pytest.raises(ValueError, match="must have the same size"):
        metric.update(
            data["scores"][:1], data["labels"][:1], torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), data["index"][:1]
        )
    with pytest.raises(ValueError, match=r"fpr_limit must be a finite number in \(0, 1\]"):
        AnomalyEvaluation(fpr_limit=0)
    with pytest.raises(TypeError, match="pixel_auroc_bins must be an int"):
        AnomalyEvaluation(pixel_auroc_bins=2.5)


def _evaluate_half(rank: int, world_size: int, data: dict[str, torch.Tensor]) -> dict[str, float]:
    # rank 0: samples 0-4 in two batches; rank 1: samples 5-10 then sample 0 again (DistributedSampler's padding)
    metric = AnomalyEvaluation()
    for rows in [[0, 1, 2], [3, 4]] if rank == 0 else [[5, 6, 7, 8], [9, 10, 0]]:
        update(metric, data, rows)
    return {key: float(value) for key, value in metric.compute().items()}


@pytest.mark.slow
def test_two_processes_each_updating_half_compute_the_one_process_values():
    data = make_set(6)
    single = AnomalyEvaluation()
    update(single, data, range(11))
    expected = {key: float(value) for key, value in single.compute().items()}
    results = run_in_ddp(_evaluate_half, data, world_size=2)
    assert results[0] == results[1] == expected
    assert expected["num_images"] == 11


@pytest.mark.parametrize("pixel_bins", [None, 8])
def test_the_mean_image_baseline_logs_the_suite_and_keeps_its_former_values(tmp_path, pixel_bins):
    root = make_mvtec(tmp_path / "mvtec", num_good=3, num_defect=2)
    raw = {"image_size": None, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    trainer = Trainer(default_root_dir=tmp_path, **QUIET)
    task = MeanImageAnomalyBaseline(pixel_bins=pixel_bins)
    datamodule = MVTecADDataModule(root, "bottle", batch_size=2, **raw)
    datamodule.setup("fit")
    task.fit_mean_image(datamodule.datasets["train"], batch_size=2)
    trainer.test(task, datamodule, verbose=False)
    batches = list(datamodule.test_dataloader())
    test = {key: torch.cat([batch[key] for batch in batches]) for key in ("image", "label", "mask")}
    maps = task.anomaly_map(test["image"])
    scores, labels, masks = maps.flatten(1).mean(1).double(), test["label"], test["mask"].bool()
    logged = {key.removeprefix("test/"): float(value) for key, value in trainer.callback_metrics.items()}
    # the two values logged before the suite, computed as the baseline computed them
    assert logged["image_auroc"] == float(image_auroc(scores, labels).float())
    assert logged["pixel_auroc"] == float(pixel_auroc(maps, masks, num_bins=pixel_bins).float())
    assert logged["pixel_aupro"] == float(aupro(maps, masks).float())
    assert logged["pixel_ap"] == float(pixel_average_precision(maps, masks).float())
    assert logged["pixel_f1_max"] == float(pixel_f1_max(maps, masks).value.float())
    assert logged["image_ap"] == float(average_precision(scores, labels).float())
    assert logged["image_f1_max"] == float(f1_max(scores, labels).value.float())
    assert logged["num_images"] == len(labels) == 7 and set(METRICS) <= set(logged)
