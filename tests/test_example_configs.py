"""Every example config runs its command (the one its header names) through the CLI, for a few steps.

Each config is run as written, with overrides that only shorten it: one epoch of two training batches (and two
evaluation batches), no worker processes, and the run's relative paths (``runs/...``, ``data/...``) in a temporary
directory. Configs on data that cannot be downloaded here (CIFAR, CUB, MVTec AD, RadImageNet, slide features) run on
small fake copies in the real on-disk formats, the large models narrowed where noted. ``CHECKS`` holds what a
config promises beyond running (its method's callback or loss, its logged quantities, its plots).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from lightning_regs.callbacks import (
    DiffusionSpectralEntropyMonitor,
    InformationPlaneMonitor,
    LabelSmoothing,
    MixUp,
    NeuralCollapseMonitor,
    ProgressiveSelfKD,
)
from lightning_regs.cli import LightningRegsCLI
from lightning_regs.models import CRReLU
from tests.helpers.fake_datasets_medical import make_mvtec, make_radimagenet
from tests.helpers.fake_datasets_vision import write_cifar, write_cub
from tests.test_mil_examples import write_slides

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIGS = sorted(EXAMPLES.glob("*.yaml"))
SHORT = [
    "--trainer.max_epochs=1",
    "--trainer.max_steps=-1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.check_val_every_n_epoch=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
# Data options set, where the config's DataModule has them, so that the run stays in this process and offline.
IN_PROCESS = {"num_workers": 0, "pin_memory": "false", "persistent_workers": "false", "download": "false"}


def _cifar(num_classes: int) -> Callable[[Path], list[str]]:
    def write(directory: Path) -> list[str]:
        write_cifar(directory / "data", num_classes=num_classes, train_per_batch=1, num_test=4)  # one batch each
        return ["--data.init_args.batch_size=8"]

    return write


def _slides(directory: Path) -> list[str]:
    write_slides(directory / "slides")
    return [f"--data.init_args.root={directory / 'slides'}", "--model.init_args.backbone.init_args.in_features=16"]


def _cub(directory: Path) -> list[str]:
    write_cub(directory / "data", num_classes=200, per_class=2, size=(8, 8))  # 200 classes, as the model's
    return ["--data.init_args.image_size=32", "--data.init_args.batch_size=4"]


def _gcd_cub(directory: Path) -> list[str]:
    write_cub(directory / "data", num_classes=200, per_class=2, size=(8, 8))  # the SSB split names all 200 classes
    vit = {"image_size": 16, "patch_size": 8, "num_layers": 2, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}
    narrow = [f"--model.init_args.backbone.init_args.{key}={value}" for key, value in vit.items()]  # ViT-B/16: minutes
    narrow += ["--model.init_args.feature_dim=16", "--model.init_args.proj_hidden=32"]
    return [*narrow, "--data.init_args.image_size=16", "--data.init_args.batch_size=8"]


def _mvtec(directory: Path) -> list[str]:
    make_mvtec(directory / "data" / "mvtec_anomaly_detection")
    return ["--data.init_args.image_size=16"]


def _radimagenet(directory: Path) -> list[str]:
    make_radimagenet(directory / "data" / "radimagenet")
    classes = ["--model.init_args.num_classes=4", "--model.init_args.backbone.init_args.num_classes=4"]
    classes += ["--model.init_args.backbone.class_path=torchvision.models.resnet18"]  # ResNet-50: 15 s to build and run
    return [*classes, "--data.init_args.image_size=32", "--data.init_args.batch_size=4"]


def _grokking(directory: Path) -> list[str]:
    return ["--trainer.max_steps=2", "--trainer.max_epochs=-1", "--trainer.limit_train_batches=1.0"]  # 1e5-step epochs


def _inp_former(directory: Path) -> list[str]:
    return ["--data.init_args.num_train=8", "--data.init_args.num_test_good=2", "--data.init_args.num_test_defect=1"]


def _musc(directory: Path) -> list[str]:
    return ["--model.init_args.layers=[2,3]", "--model.init_args.image_size=64", "--data.init_args.num_test_good=4",
            "--data.init_args.num_test_defect=1"]  # fmt: skip


def _batch_of_8(directory: Path) -> list[str]:
    return [
        "--data.init_args.batch_size=8"
    ]  # AugLocal's 14 modules, each through copies of later layers: 4 s a step at 64


# config stem -> writes the data the config reads under the run's directory; returns the overrides it needs
DATA: dict[str, Callable[[Path], list[str]]] = {
    "aem_feature_bags": _slides,
    "auglocal_cifar10": _cifar(10),
    "auglocal_digits": _batch_of_8,
    "cifar10_resnet20": _cifar(10),
    "cub200_resnet18": _cub,
    "dgl_cifar10": _cifar(10),
    "gcd_cub": _gcd_cub,
    "grokking_digits": _grokking,
    "infopro_cifar10": _cifar(10),
    "inp_former_mvtec_toy": _inp_former,
    "man_cifar10": _cifar(10),
    "musc_mvtec_toy": _musc,
    "mvtec_ad": _mvtec,
    "pskd_cifar100": _cifar(100),
    "radimagenet_resnet50": _radimagenet,
}


def command_of(config: Path) -> str:
    """The subcommand of the first command line in the config's header (``lightning-regs <command> --config ...``);
    later lines may show other subcommands (``predict`` after ``fit``)."""
    header = [line for line in config.read_text().splitlines()[:8] if line.startswith("#")]
    pattern = re.compile(rf"lightning-regs (\w+) --config examples/{re.escape(config.name)}")
    commands = [match.group(1) for line in header for match in pattern.finditer(line)]
    assert commands, f"{config.name}: the header's first 8 lines name no `lightning-regs <command> --config` line"
    return commands[0]


def callback(cli: LightningRegsCLI, kind: type):
    (found,) = [c for c in cli.trainer.callbacks if isinstance(c, kind)]
    return found


def _label_smoothing(cli, directory, printed) -> None:
    assert callback(cli, LabelSmoothing).smoothing == 0.1 and "val/acc" in printed


def _mixup(cli, directory, printed) -> None:
    assert callback(cli, MixUp).alpha == 0.2 and "val/acc" in printed


def _pskd(cli, directory, printed) -> None:
    assert callback(cli, ProgressiveSelfKD).alpha_T == 0.8


def _crrelu(cli, directory, printed) -> None:
    acts = [m for m in cli.model.modules() if isinstance(m, CRReLU)]
    assert len(acts) == 2  # the MLP's two hidden activations; every ε trained
    assert all(isinstance(a.eps, nn.Parameter) and a.eps.item() != torch.tensor(0.01).item() for a in acts)


def _aggregate(cli, directory, printed) -> None:
    from lightning_regs.tasks.aggregate_response import AggregateResponseTask

    assert isinstance(cli.model, AggregateResponseTask) and cli.model.task_settings.rho == 0.0
    assert "val/mse" in cli.trainer.callback_metrics


def _gcd_digits(cli, directory, printed) -> None:
    assert cli.model.known_classes == [0, 1, 2, 3, 4]
    assert {"gcd/all", "gcd/old", "gcd/new"} <= set(cli.trainer.callback_metrics)


def _aem_digits(cli, directory, printed) -> None:
    from lightning_regs.tasks import AttentionEntropyTerm

    (term,) = cli.model.loss_terms.values()
    assert isinstance(term, AttentionEntropyTerm) and term.weight == 0.1 and cli.datamodule.batch_size == 1
    for name in ("train/aem", "val/auroc", "val/attention_entropy", "val/instance_auroc"):  # MetricsSummary
        assert name in printed


def _aem_features(cli, directory, printed) -> None:
    assert cli.datamodule.classes == ("normal", "tumor") and "val/auroc" in cli.trainer.callback_metrics
    assert list(directory.rglob("last.ckpt"))
    (result,) = cli.trainer.test(cli.model, cli.datamodule, verbose=False)
    assert 0.0 <= result["test/auroc"] <= 1.0 and "test/attention_entropy" in result


def _grokking_checks(cli, directory, printed) -> None:
    assert {"lc/train", "lc/heldout", "lc/random", "robust/acc"} <= set(cli.trainer.callback_metrics)
    assert list(directory.rglob("lc.png")) and list(directory.rglob("robust.png"))


def _information_plane(cli, directory, printed) -> None:
    monitor = callback(cli, InformationPlaneMonitor)
    layers = ("backbone.layers.fc1.2", "backbone.layers.fc2.1", "backbone.layers.fc3.1")  # the three tanh layers
    assert sorted(monitor.history) == sorted(f"ip/{n}/{q}" for n in layers for q in ("ixt", "ity", "ixt_se", "ity_se"))
    assert monitor.points["train"].shape[0] == 1000 and monitor.measured_steps == [0, 2]
    assert list(directory.glob("runs/information_plane_digits/**/information_plane.png"))


def _representation(kind: type, columns: tuple[str, ...], plot: str) -> Callable[..., None]:
    def check(cli, directory, printed) -> None:
        monitor = callback(cli, kind)
        assert len(monitor.measured_steps) + len(monitor.skipped_steps) == 2  # before training and after the epoch
        assert monitor.max_overhead == 0.05 and monitor.every_n_epochs == 1  # the default budget; the example's
        (metrics,) = directory.rglob("metrics.csv")
        header = metrics.read_text().splitlines()[0]
        assert all(column in header for column in (*columns, f"{monitor.prefix}/overhead"))
        assert list(directory.rglob(plot))  # the plot at the end

    return check


def _anomaly(cli, directory, printed) -> None:
    metrics = cli.trainer.callback_metrics
    stage = "test" if any(name.startswith("test/") for name in metrics) else "val"
    assert {f"{stage}/image_auroc", f"{stage}/pixel_auroc"} <= set(metrics)
    assert all(math.isfinite(float(value)) for value in metrics.values())


def _mvtec_ad(cli, directory, printed) -> None:
    from lightning_regs.tasks import MeanImageAnomalyBaseline

    assert cli.datamodule.category == "bottle" and isinstance(cli.model, MeanImageAnomalyBaseline)
    _anomaly(cli, directory, printed)


def _radimagenet(cli, directory, printed) -> None:
    (checkpoint,) = directory.rglob("*.ckpt")
    state = torch.load(checkpoint, weights_only=True)["RadImageNetDataModule"]
    assert state["class_names"] == list(cli.datamodule.class_names) and state["label_level"] == "label"
    (classes,) = directory.rglob("radimagenet_classes.json")
    assert json.loads(classes.read_text())["class_names"] == state["class_names"]


def _local_learning_step(cli, directory, printed) -> None:
    assert cli.trainer.global_step == 1  # one batch of the fake CIFAR
    assert (Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt").exists()


def _musc(cli, directory, printed) -> None:
    from lightning_regs.tasks.anomaly_evaluation import METRICS

    assert float(cli.trainer.callback_metrics["test/num_images"]) == 7  # the whole test set: no limit applies
    assert {f"test/{name}" for name in METRICS} <= set(cli.trainer.callback_metrics)


CHECKS: dict[str, Callable[..., None]] = {
    "aem_digits_bags": _aem_digits,
    "aem_feature_bags": _aem_features,
    "aggregate_response_regression": _aggregate,
    "crrelu_digits": _crrelu,
    "dse_digits": _representation(
        DiffusionSpectralEntropyMonitor, ("dse/penultimate", "dsmi_x/backbone.layers.block2"), "dse.png"
    ),
    "gcd_digits": _gcd_digits,
    "grokking_digits": _grokking_checks,
    "information_plane_digits": _information_plane,
    "inp_former_mvtec_toy": _anomaly,
    "label_smoothing_digits": _label_smoothing,
    "mixup_digits": _mixup,
    "musc_mvtec_toy": _musc,
    "mvtec_ad": _mvtec_ad,
    "neural_collapse_digits": _representation(NeuralCollapseMonitor, ("nc/train/nc1", "nc/heldout/nc4"), "nc.png"),
    "pskd_cifar100": _pskd,
    "pskd_digits": _pskd,
    "radimagenet_resnet50": _radimagenet,
    **dict.fromkeys(["auglocal_cifar10", "dgl_cifar10", "infopro_cifar10", "man_cifar10"], _local_learning_step),
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: a second thread on two shared cores costs more than it brings
    yield
    torch.set_num_threads(threads)


def test_there_are_example_configs() -> None:
    assert len(CONFIGS) >= 20
    assert set(DATA) | set(CHECKS) <= {config.stem for config in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.stem)
def test_the_example_runs_its_command(config: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["lightning-regs"])
    monkeypatch.chdir(tmp_path)  # the config's relative paths (runs/..., data/...) land here
    extra = DATA[config.stem](tmp_path) if config.stem in DATA else []
    data_args = yaml.safe_load(config.read_text())["data"].get("init_args", {})
    extra += [f"--data.init_args.{key}={value}" for key, value in IN_PROCESS.items() if key in data_args]
    cli = LightningRegsCLI(args=[command_of(config), "--config", str(config), *SHORT, *extra])
    assert cli.trainer.state.finished
    if cli.trainer.state.fn == "fit":
        assert cli.trainer.global_step > 0 or cli.trainer.current_epoch == 1  # the floor takes no optimizer step
    if config.stem in CHECKS:
        CHECKS[config.stem](cli, tmp_path, capsys.readouterr().out)
