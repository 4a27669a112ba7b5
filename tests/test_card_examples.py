"""Every method card has one tested block on the user's own model and data, and that block runs as written.

PS-KD's block is run by ``tests/test_pskd_docs.py``; the other cards' blocks run here, unchanged, each checked
for what it claims to do.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lightning_regs.callbacks import (
    AdversarialRobustnessMonitor,
    InformationPlaneMonitor,
    LabelSmoothing,
    LocalComplexityMonitor,
    LocalLearningCoefficientMonitor,
    MixUp,
    ProgressiveSelfKD,
)
from tests.helpers.doc_blocks import ALL_CARDS, CARDS, block, run_python_with_warnings


@pytest.mark.parametrize("card", ALL_CARDS)
def test_every_card_has_one_tested_block_on_the_users_own_module(card: str) -> None:
    code = block(CARDS / card)
    assert re.search(r"^class \w+\((\w+Mixin, )?LightningModule\):", code, re.M), "the user's own module"


def _run(card: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    code = block(CARDS / card)
    monkeypatch.chdir(tmp_path)
    namespace, messages = run_python_with_warnings(code, f"docs/methods/{card}", card.removesuffix(".md") + "_example")
    return namespace["trainer"], messages


def _label_smoothing(trainer, messages) -> None:
    (callback,) = [c for c in trainer.callbacks if isinstance(c, LabelSmoothing)]
    assert trainer.global_step == 2 and callback.resolve_num_classes(trainer, trainer.lightning_module) == 10
    assert not [m for m in messages if "accepts_soft_targets" in m]  # the module declared it reads class_ids


def _local_learning(trainer, messages) -> None:
    module = trainer.lightning_module
    assert module.num_local_modules == 4 and module.local_input_shape == (3, 16, 16)  # shape read from the data
    assert trainer.global_step == 2 and "val/acc" in trainer.callback_metrics


def _man(trainer, messages) -> None:
    module = trainer.lightning_module
    assert module.num_local_modules == 4 and module.split_points == (2, 4, 6)  # K from torchvision block names
    ema = [p for head in module.aux_heads.values() for p in head.ema.parameters()]
    assert len(module.aux_heads) == 3 and ema and not any(p.requires_grad for p in ema)
    assert trainer.global_step == 2


def _auglocal(trainer, messages) -> None:
    assert trainer.lightning_module.num_local_modules == 7 and trainer.global_step == 2


def _crrelu(trainer, messages) -> None:
    from lightning_regs.models import CRReLU

    acts = [m for m in trainer.lightning_module.modules() if isinstance(m, CRReLU)]
    assert len(acts) == 9 and trainer.global_step == 2  # resnet18: the stem's ReLU and one per block
    assert all(m.eps.grad is not None and m.eps.item() != CRReLU().eps.item() for m in acts)  # every ε trained


def _mixup(trainer, messages) -> None:
    mixer = next(c for c in trainer.callbacks if isinstance(c, MixUp))
    pskd = next(c for c in trainer.callbacks if isinstance(c, ProgressiveSelfKD))
    assert mixer.alpha == 0.2 and trainer.global_step == 8 and bool(pskd.table.seen.all())  # 2 epochs of 4 batches
    assert not [m for m in messages if "accepts_soft_targets" in m]


def _aem(trainer, messages) -> None:
    assert trainer.global_step == 16  # one bag per step
    entropy = trainer.callback_metrics["train/attention_entropy"]
    assert 0 < entropy.item() <= math.log(39) + 1e-6  # H of one bag, in nats, at most log N


def _musc(trainer, messages) -> None:
    assert float(trainer.callback_metrics["test/image_auroc"]) == 1.0  # the three planted defects rank first


def _monitor(kind: type, names: set[str]) -> Callable[..., None]:
    def check(trainer, messages) -> None:
        (monitor,) = [c for c in trainer.callbacks if isinstance(c, kind)]
        assert set(monitor.history) == names
        assert all(len(v) == len(monitor.measured_steps) > 0 for v in monitor.history.values())
        assert all(math.isfinite(x) for v in monitor.history.values() for x in v)

    return check


CHECKS = {
    "aem.md": _aem,
    "musc.md": _musc,
    "label_smoothing.md": _label_smoothing,
    "local_learning.md": _local_learning,
    "man.md": _man,
    "auglocal.md": _auglocal,
    "crrelu.md": _crrelu,
    "mixup.md": _mixup,
    "local_complexity.md": _monitor(
        LocalComplexityMonitor, {f"lc/{s}{e}" for s in ("train", "heldout", "random") for e in ("", "_se")}
    ),
    "llc.md": _monitor(
        LocalLearningCoefficientMonitor,
        {f"llc/{q}" for q in ("mean", "mean_se", "std", "n_beta", "init_loss", "flagged", "trace_rise")},
    ),
    "information_plane.md": _monitor(
        InformationPlaneMonitor,
        {f"ip/features.{i}/{q}{e}" for i in (2, 4) for q in ("ixt", "ity") for e in ("", "_se")},
    ),
    "robustness_monitor.md": _monitor(
        AdversarialRobustnessMonitor, {f"robust/{q}{e}" for q in ("acc", "clean_acc") for e in ("", "_se")}
    ),
}


def test_every_card_but_pskd_is_run_here() -> None:
    # pskd.md: tests/test_pskd_docs.py; neural_collapse.md, dse.md: tests/test_representation_docs.py;
    # lego_gcd.md: tests/test_gcd_card.py; aggregate_responses.md: tests/test_aggregate_response.py;
    # inp_former.md: tests/test_inp_former.py::test_the_cards_own_code_block_runs_as_written
    skipped = {"pskd.md", "neural_collapse.md", "dse.md", "lego_gcd.md", "aggregate_responses.md", "inp_former.md"}
    assert set(CHECKS) == set(ALL_CARDS) - skipped


@pytest.mark.parametrize("card", sorted(CHECKS))
def test_the_own_code_block_runs_as_written(card: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    trainer, messages = _run(card, tmp_path, monkeypatch)
    CHECKS[card](trainer, messages)
