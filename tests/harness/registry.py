"""One tiny canonical setting per public callback, mixin and task: what the generic tests run.

Every factory is a module-level function (``ddp_spawn`` pickles what the Trainer is handed) and
builds fresh objects on each call. Settings avoid BatchNorm in what trains, so that a 2-process run
equals one process on the same global batches (per-rank batch statistics would differ).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy
from torch import nn

from lightning_regs import callbacks as cb
from lightning_regs.local_learning import LocalLearningMixin
from lightning_regs.models import MLP, AttentionMIL, CRReLU, LayeredModel, replace_activations
from lightning_regs.tasks import (
    AggregateResponseTask,
    AttentionEntropyTerm,
    GCDClassifier,
    GrokkingClassifier,
    ImageClassifier,
    INPFormer,
    LegoGCDMixin,
    LocalLearningClassifier,
    MeanImageAnomalyBaseline,
    MILClassifier,
)
from tests.harness import representation_settings as representation
from tests.helpers import gcd
from tests.helpers.ddp import DDP_SPAWN, spawn_ddp
from tests.helpers.trainers import SequentialDigits

__all__ = ["REGISTRY", "MethodSetting", "setting"]


@dataclass(frozen=True)
class MethodSetting:
    """A method's canonical setting.

    Attributes:
        name: the entry's id in test names and in the README's methods table.
        covers: the public classes this setting proves.
        make_task: builds the LightningModule.
        make_callbacks: builds the method's callbacks (their state is compared across runs).
        make_datamodule: builds the DataModule from ``(root, per_rank_batch)``; it must serve the samples
            in a fixed order split over the ranks (``SequentialDigits`` does) for the DDP comparison.
        max_epochs, limit_train_batches: the run's length (the resume test stops after epoch 1).
        ddp_strategy: the 2-process strategy.
        atol: tolerance of the DDP-vs-one-process comparison (float32 sums in another order).
        no_resume_because: why a stopped-and-resumed run does not apply (the resume tests skip, saying so).
        ddp_differs_because: why two processes do not compute what one process computes on the same global
            batches (losses over each rank's batch, as the official code does). The DDP tests then prove that the
            run trains and that the ranks end identical, and do not compare it with one process.
    """

    name: str
    covers: tuple[type, ...]
    make_task: Callable[[], pl.LightningModule]
    make_callbacks: Callable[[], list[pl.Callback]] = list
    make_datamodule: Callable[[Path, int], pl.LightningDataModule] = field(default=None)  # type: ignore[assignment]
    max_epochs: int = 3
    limit_train_batches: int = 4
    ddp_strategy: Callable[[], Any] = field(default=None)  # type: ignore[assignment]
    atol: float = 1e-5
    no_resume_because: str | None = None
    ddp_differs_because: str | None = None

    def datamodule(self, root: Path, per_rank_batch: int) -> pl.LightningDataModule:
        return (self.make_datamodule or sequential_digits)(root, per_rank_batch)

    def strategy(self) -> Any:
        return (self.ddp_strategy or ddp_spawn)()


def sequential_digits(root: Path, per_rank_batch: int) -> pl.LightningDataModule:
    return SequentialDigits(batch_size=per_rank_batch)


def ddp_spawn() -> str:
    return DDP_SPAWN


def ddp_spawn_unused_parameters() -> DDPStrategy:
    return spawn_ddp(find_unused_parameters=True)


def mlp(depth: int = 3) -> MLP:
    return MLP(in_features=64, num_classes=10, width=24, depth=depth)


def small_convnet() -> LayeredModel:
    """Three conv layers without BatchNorm (InfoPro's decoder needs (C, H, W) features)."""

    def conv(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU())

    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    return LayeredModel([("c1", conv(1, 8)), ("c2", conv(8, 8)), ("c3", conv(8, 8))], head, num_classes=10)


def image_classifier() -> ImageClassifier:
    return ImageClassifier(mlp(), 10, lr=0.1, scheduler="cosine", weight_decay=1e-4)


def crrelu_classifier() -> ImageClassifier:
    backbone = mlp()
    replace_activations(backbone, new=CRReLU)  # its two ReLUs, one ε each
    return ImageClassifier(backbone, 10, lr=0.1, scheduler="cosine", weight_decay=1e-4)


def aem_classifier() -> MILClassifier:
    """Two-head gated ABMIL with AEM: the term and the attention's metrics on padded bags."""
    model = AttentionMIL(in_features=64, num_classes=2, embed_dim=16, attention_dim=8, heads=2)
    return MILClassifier(model, lr=1e-3, loss_terms=[AttentionEntropyTerm(weight=0.1)])


def digits_bags(root: Path, per_rank_batch: int) -> pl.LightningDataModule:
    from lightning_regs.datamodules import DigitsBagsDataModule

    return DigitsBagsDataModule(batch_size=per_rank_batch)


def aggregate_response_task() -> AggregateResponseTask:
    return AggregateResponseTask(nn.Linear(8, 1), rho=0.5, lr=0.05, scheduler="cosine")


def aggregate_regression(root: Path, per_rank_batch: int) -> pl.LightningDataModule:
    """Bags of 4 rows, whole bags per batch: per_rank_batch rows are per_rank_batch // 4 bags."""
    from lightning_regs.datamodules import AggregateRegressionDataModule

    return AggregateRegressionDataModule(
        num_samples=160, num_features=8, bag_size=4, num_val=41, num_test=41, bags_per_batch=per_rank_batch // 4
    )


def grokking_classifier() -> GrokkingClassifier:
    return GrokkingClassifier(mlp(), 10, lr=1e-2)


def local_learning(head: str, man: bool = False, preset: str = "library") -> Callable[[], LocalLearningClassifier]:
    return _LocalLearning(head, man, preset)


@dataclass(frozen=True)
class _LocalLearning:
    head: str
    man: bool
    preset: str = "library"

    def __call__(self) -> LocalLearningClassifier:
        split: Any = "auto" if self.head == "auglocal" else [0, 1]
        K = None if self.head == "auglocal" else 3
        extra: dict[str, Any] = {"d": 1} if self.head == "auglocal" else {}
        if self.man:
            extra["man_momentum"] = 0.5  # far from 1, so that a missed or doubled EMA update shows
        backbone = small_convnet() if self.head == "infopro" else mlp(depth=4)
        return LocalLearningClassifier(
            backbone, 10, K=K, split=split, head=self.head, man=self.man, input_shape=(1, 8, 8),
            head_norm=False, lr=0.1, scheduler="cosine", preset=self.preset, **extra,
        )  # fmt: skip


def no_callbacks() -> list[pl.Callback]:
    return []


def pskd() -> list[pl.Callback]:
    return [cb.ProgressiveSelfKD(alpha_T=0.8)]


def label_smoothing() -> list[pl.Callback]:
    return [cb.LabelSmoothing(0.1)]


def pskd_then_label_smoothing() -> list[pl.Callback]:
    return [cb.ProgressiveSelfKD(alpha_T=0.8), cb.LabelSmoothing(0.1)]


def mixup() -> list[pl.Callback]:
    return [cb.MixUp(alpha=0.4)]


def cutmix() -> list[pl.Callback]:
    return [cb.CutMix(alpha=1.0, per_sample=True)]


def mixup_cutmix_pskd_label_smoothing() -> list[pl.Callback]:
    return [cb.MixUpCutMix(0.8, 1.0, switch_prob=0.5), cb.ProgressiveSelfKD(alpha_T=0.8), cb.LabelSmoothing(0.1)]


#: Why a mixing run on two processes is not one process on the same global batches.
MIXING_PAIRS_PER_RANK = (
    "rows are paired with rows of their own rank (as timm and torchvision pair within the batch they are given): "
    "two ranks of 16 mix within each 16, one process mixes across all 32"
)


def local_complexity() -> list[pl.Callback]:
    return [
        cb.LocalComplexityMonitor(
            radius=0.5, num_directions=4, num_points=12, num_measurements=5, log_per_layer=True,
            max_overhead=None, plot=False,
        )
    ]  # fmt: skip


def robustness() -> list[pl.Callback]:
    return [
        cb.AdversarialRobustnessMonitor(
            epsilon=0.3, steps=3, num_points=16, every_n_epochs=1, max_overhead=None, plot=False
        )
    ]


def llc() -> list[pl.Callback]:
    return [
        cb.LocalLearningCoefficientMonitor(
            num_chains=2, num_draws=5, num_points=8, pool_size=32, num_measurements=4, max_overhead=None, plot=False
        )
    ]


def information_plane() -> list[pl.Callback]:
    # lossy_knn: its noise comes from a generator keyed by (seed, step), which resume and DDP must reproduce
    return [
        cb.InformationPlaneMonitor(
            estimator="lossy_knn", k=2, subsamples=4, num_points=200, num_measurements=4, max_overhead=None,
            plot=False,
        )
    ]  # fmt: skip


def metrics_summary() -> list[pl.Callback]:
    return [cb.MetricsSummary()]


def mvtec(root: Path, per_rank_batch: int) -> pl.LightningDataModule:
    from lightning_regs.datamodules import MVTecADDataModule
    from tests.helpers.fake_datasets_medical import make_mvtec

    folder = make_mvtec(root / "mvtec") if not (root / "mvtec").exists() else root / "mvtec"
    return MVTecADDataModule(root=str(folder), category="bottle", image_size=16, batch_size=per_rank_batch)


def mvtec32(root: Path, per_rank_batch: int) -> pl.LightningDataModule:
    """The fake MVTec category at 32 px: the smallest size the EfficientNet-Lite0 stand-in's stages 1-2 resolve."""
    from lightning_regs.datamodules import MVTecADDataModule
    from tests.helpers.fake_datasets_medical import make_mvtec

    folder = root / "mvtec64"
    if not folder.exists():  # 64 training images: 2 global batches of 32 per epoch, enough steps to stop mid-run
        make_mvtec(folder, num_train=64)
    return MVTecADDataModule(root=str(folder), category="bottle", image_size=32, batch_size=per_rank_batch)


def inp_former() -> pl.LightningModule:
    return INPFormer(
        encoder="efficientnet_lite0", encoder_weights=None, encoder_layers=[1, 2], num_decoder_blocks=2, warmup_steps=2
    )


#: Public tasks that train nothing, so no fit/resume/DDP-training entry applies; the tests named prove them.
EVALUATION_ONLY: dict[str, str] = {
    "MuScZeroShot": "tests/test_musc.py (zero-shot: test-time only; 2 processes equal one, CLI test without fit)",
    "AnomalyPredictionWriter": "tests/test_anomaly_prediction_writer.py (acts in predict only: writes the maps)",
}

#: The compatibility matrix's columns for each evaluation-only task (``docs/compatibility.md`` renders them): the
#: test proving a cell that applies, "not run" for one that applies and is not proven yet, or why it does not apply.
EVALUATION_ONLY_COLUMNS: dict[str, dict[str, str]] = {
    "MuScZeroShot": {
        "single": "✓ `tests/test_musc.py::test_trainer_test_logs_the_seven_metrics_without_fit`",
        "ddp": "✓ atol 1e-6 `tests/test_musc.py::test_two_ddp_processes_give_the_one_process_values`",
        "bf16": "✓ ±0.05 `tests/test_musc.py::test_bf16_mixed_encodes_in_bf16_and_scores_near_the_fp32_values`",
        "accumulate": "does not apply: no optimizer step",
        "compile": "applies, not run yet",
        "clip": "does not apply: no gradient",
        "resume": "does not apply: one pass, nothing trained (no checkpoint needed)",
        "nodes": "applies, not run yet (the gather is over the world; `ddp` proves two processes)",
        "fsdp2": "does not apply: no trained parameter to shard",
    },
    "AnomalyPredictionWriter": {
        "single": "✓ `tests/test_anomaly_prediction_writer.py::test_musc_predictions_made_at_the_epochs_end_are_written`",  # noqa: E501
        "ddp": "applies, not run yet (each rank writes its own file)",
        "bf16": "does not apply: it writes what predict returns",
        "accumulate": "does not apply: predict only",
        "compile": "does not apply: it writes what predict returns",
        "clip": "does not apply: predict only",
        "resume": "does not apply: predict only, no state",
        "nodes": "applies, not run yet (each rank writes its own file)",
        "fsdp2": "does not apply: it writes what predict returns",
    },
}


def setting(name: str) -> MethodSetting:
    """The registry entry called ``name``."""
    return next(entry for entry in REGISTRY if entry.name == name)


_LOCAL = {"ddp_strategy": ddp_spawn_unused_parameters}

REGISTRY: tuple[MethodSetting, ...] = (
    MethodSetting("image_classifier", (ImageClassifier,), image_classifier, no_callbacks),
    MethodSetting("grokking_classifier", (GrokkingClassifier,), grokking_classifier, no_callbacks),
    MethodSetting("crrelu", (CRReLU,), crrelu_classifier, no_callbacks),
    MethodSetting("metrics_summary", (cb.MetricsSummary,), image_classifier, metrics_summary, max_epochs=2),
    MethodSetting("label_smoothing", (cb.LabelSmoothing, cb.SoftTargetCallback), image_classifier, label_smoothing),
    MethodSetting("pskd", (cb.ProgressiveSelfKD,), image_classifier, pskd),
    MethodSetting("pskd+label_smoothing", (), image_classifier, pskd_then_label_smoothing),
    MethodSetting(
        "mixup",
        (cb.MixUp, cb.InputRewritingCallback),
        image_classifier,
        mixup,
        ddp_differs_because=MIXING_PAIRS_PER_RANK,
    ),
    MethodSetting("cutmix", (cb.CutMix,), image_classifier, cutmix, ddp_differs_because=MIXING_PAIRS_PER_RANK),
    MethodSetting(
        "mixup_cutmix+pskd+label_smoothing",
        (cb.MixUpCutMix,),
        image_classifier,
        mixup_cutmix_pskd_label_smoothing,
        ddp_differs_because=MIXING_PAIRS_PER_RANK,
    ),
    MethodSetting(
        "local_complexity_monitor", (cb.LocalComplexityMonitor, cb.ScheduledMonitor), image_classifier, local_complexity
    ),
    MethodSetting("robustness_monitor", (cb.AdversarialRobustnessMonitor,), image_classifier, robustness),
    # nβ ≈ 176 multiplies the loss differences of weights that DDP's reduction leaves ~1e-7 apart
    MethodSetting("llc_monitor", (cb.LocalLearningCoefficientMonitor,), image_classifier, llc, atol=1e-3),
    MethodSetting("information_plane_monitor", (cb.InformationPlaneMonitor,), image_classifier, information_plane),
    MethodSetting("local_learning_dgl", (LocalLearningClassifier, LocalLearningMixin), local_learning("dgl"), **_LOCAL),
    MethodSetting("local_learning_infopro", (), local_learning("infopro"), **_LOCAL),
    MethodSetting("local_learning_auglocal", (), local_learning("auglocal"), **_LOCAL),
    MethodSetting("local_learning_man", (), local_learning("dgl", man=True), **_LOCAL),
    MethodSetting("local_learning_man_official", (), local_learning("dgl", man=True, preset="official"), **_LOCAL),
    MethodSetting(
        "mean_image_anomaly_baseline",
        (MeanImageAnomalyBaseline,),
        MeanImageAnomalyBaseline,
        no_callbacks,
        make_datamodule=mvtec,
        max_epochs=2,
        limit_train_batches=1,
        no_resume_because="it takes no optimizer step, so no checkpoint is written before the end of fit",
    ),
    # AdamW with eps=1e-10 (the official) divides by the root of tiny second moments: float32 sums in another order
    # on two ranks move a prototype by up to 4e-5 after 8 steps.
    MethodSetting(
        "inp_former",
        (INPFormer,),
        inp_former,
        no_callbacks,
        make_datamodule=mvtec32,
        max_epochs=4,
        limit_train_batches=2,  # all of the 64 training images
        atol=1e-4,
    ),
    MethodSetting(
        "aem",
        (MILClassifier, AttentionMIL, AttentionEntropyTerm),
        aem_classifier,
        no_callbacks,
        make_datamodule=digits_bags,
    ),
    MethodSetting(
        "aggregate_response",
        (AggregateResponseTask,),
        aggregate_response_task,
        no_callbacks,
        make_datamodule=aggregate_regression,
    ),
    MethodSetting(
        "neural_collapse_monitor", (cb.NeuralCollapseMonitor,), image_classifier, representation.neural_collapse
    ),
    MethodSetting("dse_monitor", (cb.DiffusionSpectralEntropyMonitor,), image_classifier, representation.dse),
    MethodSetting(
        "gcd_classifier",
        (GCDClassifier, LegoGCDMixin),
        gcd.gcd_classifier,
        no_callbacks,
        make_datamodule=gcd.sequential_gcd_digits,
        ddp_differs_because="SupCon, InfoNCE, the mean-entropy term and the means over labelled rows are computed "
        "over each rank's batch, as SimGCD and LegoGCD compute them: two ranks of 16 images optimize the mean of two "
        "16-image losses, not one 32-image loss",
    ),
)
