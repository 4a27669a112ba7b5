"""MuSc: mutual scoring against a loop written from the official code, order invariance, chunking, LNAMD, RsCIN, and
``MuScZeroShot`` in a real ``Trainer.test`` (one process, two DDP processes; the example config's
`test` without fit runs in test_example_configs.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

from lightning_regs.datamodules.mvtec_toy import MVTecToyDataModule
from lightning_regs.functional.musc import interval_average, lnamd_features, musc_anomaly_maps, mutual_scores, rscin
from lightning_regs.tasks.anomaly_evaluation import METRICS
from lightning_regs.tasks.musc import MuScZeroShot
from tests.helpers.ddp import DDP_SPAWN_CPU
from tests.helpers.trainers import QUIET

SMALL_TOY = {"num_train": 1, "num_test_good": 4, "num_test_defect": 1, "batch_size": 3}  # 7 test images


def loop_mutual_scores(z: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """The official compute_scores_slow, written as loops: per-image nearest distances, sorted, interval mean."""
    n, p, _ = z.shape
    out = torch.zeros(n, p, dtype=torch.float64)
    for i in range(n):
        for a in range(p):
            nearest = []
            for j in range(n):
                if j != i:
                    nearest.append(min(float(torch.linalg.vector_norm(z[i, a] - z[j, b])) for b in range(p)))
            nearest.sort()
            start, stop = int(len(nearest) * lo), int(len(nearest) * hi)  # the official truncation
            out[i, a] = sum(nearest[start:stop]) / (stop - start)
    return out


@pytest.mark.parametrize(("n", "interval"), [(11, (0.0, 0.3)), (8, (0.15, 0.6)), (6, (0.0, 1.0))])
def test_mutual_scores_equal_the_official_loop(n, interval):
    z = torch.randn(n, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    torch.testing.assert_close(mutual_scores(z, interval), loop_mutual_scores(z, *interval))


def test_too_few_images_for_the_interval_average_one_value_instead_of_nan():
    z = torch.randn(3, 4, 2, dtype=torch.float64)  # int(2 * 0.3) = 0: the official code averages nothing (NaN)
    torch.testing.assert_close(mutual_scores(z), loop_mutual_scores(z, 0.0, 0.5))  # the nearest image's distance
    assert interval_average(torch.tensor([3.0, 1.0]), (0.0, 0.3)).item() == 1.0


def test_scores_are_invariant_to_the_order_of_the_test_images():
    g = torch.Generator().manual_seed(1)
    maps = [torch.randn(9, 6, 6, 6, generator=g), torch.randn(9, 10, 3, 3, generator=g)]
    perm = torch.randperm(9, generator=g)
    reference = musc_anomaly_maps(maps, degrees=(1, 3, 5))
    permuted = musc_anomaly_maps([m[perm] for m in maps], degrees=(1, 3, 5))
    torch.testing.assert_close(permuted, reference[perm], rtol=1e-5, atol=1e-6)
    features, scores = F.normalize(torch.randn(9, 4, generator=g), dim=-1), torch.rand(9, generator=g)
    torch.testing.assert_close(rscin(scores[perm], features[perm]), rscin(scores, features)[perm])


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_chunked_equals_unchunked(chunk_size):
    z = F.normalize(torch.randn(6, 16, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)), dim=-1)
    whole = mutual_scores(z, chunk_size=6 * 16)
    torch.testing.assert_close(mutual_scores(z, chunk_size=chunk_size), whole)
    queries = torch.tensor([4, 1])  # a rank's own images scored against the whole set
    torch.testing.assert_close(mutual_scores(z, chunk_size=chunk_size, queries=queries), whole[queries])


def official_lnamd(x: torch.Tensor, r: int) -> torch.Tensor:
    """LNAMD as the official _LNAMD.py computes it for one layer: LayerNorm, unfold, adaptive_avg_pool1d, L2."""
    x = torch.nn.LayerNorm(list(x.shape[1:]), dtype=x.dtype)(x)
    n, c = x.shape[:2]
    patches = F.unfold(x, kernel_size=r, padding=(r - 1) // 2).reshape(n, c, r, r, -1).permute(0, 4, 1, 2, 3)
    pooled = F.adaptive_avg_pool1d(patches.reshape(-1, 1, c * r * r), c).reshape(n, -1, c)
    return F.normalize(pooled, dim=-1)


@pytest.mark.parametrize("r", [1, 3, 5])
def test_lnamd_equals_the_official_unfold_and_mean_mapper(r):
    x = torch.randn(3, 4, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(r))
    torch.testing.assert_close(lnamd_features([x], r)[0], official_lnamd(x, r))


def test_lnamd_with_degree_1_is_no_aggregation():
    x = torch.randn(4, 5, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    plain = F.normalize(F.layer_norm(x, x.shape[1:]).flatten(2).transpose(1, 2), dim=-1)
    torch.testing.assert_close(lnamd_features([x], 1)[0], plain)
    torch.testing.assert_close(musc_anomaly_maps([x], degrees=(1,)).flatten(1), mutual_scores(plain))


def test_rscin_closed_form():
    g = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=torch.float64)  # W = [[1,.8,0],[.8,1,.6],[0,.6,1]]
    s = torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64)  # min-max normalized: (0, 0.5, 1)
    k1 = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)  # each image's own score
    k2 = torch.tensor([0.4 / 1.8, 0.5 / 1.8, 1.3 / 1.6], dtype=torch.float64)
    k3 = torch.tensor([0.4 / 1.8, (0.5 + 0.6) / 2.4, 1.3 / 1.6], dtype=torch.float64)
    torch.testing.assert_close(rscin(s, g, [1]), k1)
    torch.testing.assert_close(rscin(s, g, [2]), k2)
    torch.testing.assert_close(rscin(s, g, [1, 2, 3]), (k1 + k2 + k3) / 3)
    torch.testing.assert_close(rscin(s, g, [5]), k3)  # k beyond the set keeps every image
    assert rscin(s, g, []) is s and rscin(s, g, [0]) is s  # off, as the official k_list=[0]


def test_the_task_scores_a_set_of_images_in_one_process():
    torch.manual_seed(0)
    task = MuScZeroShot("torchvision:resnet18", encoder_weights=None, layers=[1, 2], degrees=[1, 3], rscin_k=[])
    images = torch.randn(1, 3, 32, 32).expand(5, -1, -1, -1) + 0.05 * torch.randn(5, 3, 32, 32)
    images[3, :, 8:16, 8:16] += 3.0
    scores, maps = task.score_images(images)
    assert int(scores.argmax()) == 3 and maps.shape == (5, 32, 32)
    assert maps[3, 8:16, 8:16].mean() > maps[3].mean()


def _toy(root: Path, category: str = "stripes") -> MVTecToyDataModule:
    return MVTecToyDataModule(root, category, **SMALL_TOY)


def _task() -> MuScZeroShot:
    return MuScZeroShot(layers=[2, 3], degrees=[1, 3], chunk_size=50)  # the stand-in on the toy's 64 px: 8x8 maps


def test_trainer_test_logs_the_seven_metrics_without_fit(tmp_path):
    trainer = Trainer(default_root_dir=tmp_path, accelerator="cpu", **QUIET)
    trainer.test(_task(), _toy(tmp_path / "data"), verbose=False)
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    assert metrics["test/num_images"] == 7
    for name in METRICS:
        assert 0.0 <= metrics[f"test/{name}"] <= 1.0, name
    assert metrics["test/image_auroc"] > 0.7 and metrics["test/pixel_auroc"] > 0.9


@pytest.mark.slow
def test_two_ddp_processes_give_the_one_process_values(tmp_path):
    # 7 test images on 2 ranks: DistributedSampler pads one duplicate, which must count once everywhere
    single = Trainer(default_root_dir=tmp_path, accelerator="cpu", **QUIET)
    single.test(_task(), _toy(tmp_path / "data"), verbose=False)
    expected = {key: float(value) for key, value in single.callback_metrics.items()}
    ddp = Trainer(default_root_dir=tmp_path, **{**QUIET, **DDP_SPAWN_CPU})
    ddp.test(_task(), _toy(tmp_path / "data"), verbose=False)
    assert float(ddp.callback_metrics["test/num_images"]) == expected["test/num_images"] == 7
    for name in METRICS:
        assert float(ddp.callback_metrics[f"test/{name}"]) == pytest.approx(expected[f"test/{name}"], abs=1e-6), name


def test_predict_leaves_scores_and_maps(tmp_path):
    trainer = Trainer(default_root_dir=tmp_path, accelerator="cpu", **QUIET)
    task = _task()
    trainer.predict(task, datamodule=_toy(tmp_path / "data"), return_predictions=False)
    assert task.predictions["index"].tolist() == list(range(7))
    assert task.predictions["score"].shape == (7,) and task.predictions["anomaly_map"].shape == (7, 1, 64, 64)


def test_fit_is_a_named_error(tmp_path):
    trainer = Trainer(default_root_dir=tmp_path, accelerator="cpu", max_epochs=1, **QUIET)
    with pytest.raises(RuntimeError, match=r"zero-shot.*lightning-regs test"):
        trainer.fit(_task(), _toy(tmp_path / "data"))


def test_one_test_image_is_a_named_error(tmp_path):
    task = MuScZeroShot("torchvision:resnet18", encoder_weights=None, layers=[1])
    with pytest.raises(ValueError, match="at least 2"):
        task.score_images(torch.zeros(1, 3, 32, 32))
    dm = MVTecToyDataModule(tmp_path / "data", "stripes", num_train=1, num_test_good=1, num_test_defect=1)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(_prepared(dm), [0]), batch_size=1)
    with pytest.raises(ValueError, match=r"1 distinct image.*at least 2"):
        Trainer(default_root_dir=tmp_path, accelerator="cpu", **QUIET).test(task, loader, verbose=False)


def _prepared(dm: MVTecToyDataModule) -> torch.utils.data.Dataset:
    dm.prepare_data()
    dm.setup("test")
    return dm.test_dataloader().dataset


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"degrees": [1, 2]}, ValueError, "degrees must be odd"),
        ({"degrees": []}, ValueError, "degrees"),
        ({"interval": (0.3, 0.1)}, ValueError, "interval"),
        ({"interval": (0.0, 1.5)}, ValueError, "interval"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"rscin_k": [0]}, ValueError, "rscin_k"),
        ({"image_size": 2.5}, TypeError, "image_size"),
        ({"data_std": [1.0, 0.0, 1.0]}, ValueError, "data_std"),
        ({"data_mean": [0.5]}, ValueError, "data_mean"),
        ({"layers": [7]}, ValueError, "layers"),
    ],
)
def test_bad_arguments_are_named_errors(kwargs, error, words):
    with pytest.raises(error, match=words):
        MuScZeroShot(**{"encoder": "torchvision:resnet18", "encoder_weights": None, "layers": [1], **kwargs})


def test_functional_bad_inputs_are_named_errors():
    with pytest.raises(ValueError, match="N >= 2"):
        mutual_scores(torch.zeros(1, 4, 2))
    with pytest.raises(ValueError, match="odd"):
        lnamd_features([torch.zeros(2, 3, 4, 4)], 2)
    with pytest.raises(ValueError, match="interval"):
        interval_average(torch.zeros(3), (0.5, 0.5))
    assert math.isfinite(float(interval_average(torch.zeros(1), (0.0, 0.3))))


def test_bf16_mixed_encodes_in_bf16_and_scores_near_the_fp32_values(tmp_path):
    """The matrix's bf16-mixed column for this evaluation-only task (docs/compatibility.md)."""
    full = Trainer(default_root_dir=tmp_path, accelerator="cpu", **QUIET)
    full.test(_task(), _toy(tmp_path / "data"), verbose=False)
    task, dtypes = _task(), set()
    task.encoder.register_forward_hook(lambda module, args, out: dtypes.add(out.maps()[0].dtype))
    half = Trainer(default_root_dir=tmp_path, accelerator="cpu", precision="bf16-mixed", **QUIET)
    half.test(task, _toy(tmp_path / "data"), verbose=False)
    assert dtypes == {torch.bfloat16}
    for name in ("image_auroc", "pixel_auroc", "pixel_aupro"):
        assert float(half.callback_metrics[f"test/{name}"]) == pytest.approx(
            float(full.callback_metrics[f"test/{name}"]), abs=0.05
        )


class _NaNOnOddIndices(torch.utils.data.Dataset):
    """The toy's test set with every odd index's image NaN: under 2 DDP ranks, rank 1 gets only NaN images."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = dict(self.dataset[index])
        if index % 2:
            sample["image"] = torch.full_like(sample["image"], math.nan)
        return sample


def _nan_loader(root: Path) -> torch.utils.data.DataLoader:
    dm = MVTecToyDataModule(root, "stripes", **{**SMALL_TOY, "num_test_good": 5})  # 8 test images, 4 per rank
    return torch.utils.data.DataLoader(_NaNOnOddIndices(_prepared(dm)), batch_size=2)


@pytest.mark.slow
def test_a_ddp_rank_whose_images_are_all_nan_still_gathers_and_scores_the_rest(tmp_path):
    single = Trainer(default_root_dir=tmp_path, accelerator="cpu", **QUIET)
    with pytest.warns(UserWarning, match="NaN"):
        single.test(_task(), _nan_loader(tmp_path / "data"), verbose=False)
    expected = {key: float(value) for key, value in single.callback_metrics.items()}
    assert expected["test/num_images"] == 4
    ddp = Trainer(default_root_dir=tmp_path, **{**QUIET, **DDP_SPAWN_CPU})
    ddp.test(_task(), _nan_loader(tmp_path / "data"), verbose=False)
    assert float(ddp.callback_metrics["test/num_images"]) == 4
    for name in METRICS:
        assert float(ddp.callback_metrics[f"test/{name}"]) == pytest.approx(expected[f"test/{name}"], abs=1e-6), name
