"""Loss terms as modules: ImageClassifier adds Σ weight·term to its loss, terms see every model output and keep state.

A term's buffer is trained on, saved and restored; models may return logits, a dict or an object with ``.logits``;
LegoGCD's LER and DKL are terms whose ``q̂`` stays at the checkpoint key ``prior_ema.prior``.
"""

from __future__ import annotations

import sys
from collections import namedtuple
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer, seed_everything
from torch import nn

from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.functional import dual_view_kl, local_entropy_regularization
from lightning_regs.tasks import (
    DualViewKLTerm,
    GrokkingClassifier,
    ImageClassifier,
    LegoGCDMixin,
    LocalEntropyTerm,
    LossTerm,
    model_outputs,
)
from tests.helpers.trainers import QUIET

FIT = {**QUIET, "accelerator": "cpu", "devices": 1, "limit_val_batches": 0}


class CenterTerm(LossTerm):
    """Mean squared distance of the logits to a buffer ``center`` (an EMA of the batch-mean logits); a warm-up weight.

    ``current_weight`` is ``weight`` from step 1 on and half of it at step 0, so the schedule reaches the loss.
    """

    def __init__(self, num_classes: int = 10, weight: float = 0.3, momentum: float = 0.5, name: str = "center"):
        super().__init__(name, weight)
        self.momentum = momentum
        self.register_buffer("center", torch.linspace(-1.0, 1.0, num_classes))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, outputs, batch):
        return (outputs["logits"] - self.center).pow(2).sum(dim=1).mean()

    def update(self, outputs, batch):
        self.center.mul_(self.momentum).add_(outputs["logits"].detach().mean(dim=0), alpha=1 - self.momentum)
        self.updates += 1

    def current_weight(self, step: int, epoch: int) -> float:
        return self.weight * (0.5 if step == 0 else 1.0)


class FeatureNorm(LossTerm):
    """Mean squared norm of ``outputs[key]``."""

    def __init__(self, key: str = "features", weight: float = 0.1, name: str = "feature_norm"):
        super().__init__(name, weight)
        self.key = key

    def forward(self, outputs, batch):
        return outputs[self.key].pow(2).sum(dim=1).mean()


class DictNet(nn.Module):
    """Digits (1x8x8) to ``{"logits", "features"}``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, image):
        features = self.body(image)
        return {"logits": self.head(features), "features": features}


@dataclass
class NetOutput:
    logits: torch.Tensor
    attention: torch.Tensor
    note: str = "not a tensor"


class DataclassNet(DictNet):
    """Digits to a dataclass with ``.logits`` and ``.attention`` (a softmax over the 16 features)."""

    def forward(self, image):
        outputs = super().forward(image)
        return NetOutput(outputs["logits"], outputs["features"].softmax(dim=1))


class AttentionEntropy(LossTerm):
    def forward(self, outputs, batch):
        attention = outputs["attention"]
        return -(attention * attention.clamp_min(1e-12).log()).sum(dim=1).mean()


def linear_task(**kwargs) -> ImageClassifier:
    seed_everything(0, verbose=False)
    return ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), 10, lr=0.05, **kwargs)


def digits_batch(rows: int = 16) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return {"image": torch.randn(rows, 1, 8, 8, generator=generator), "target": torch.arange(rows) % 10}


class HandComputedLoss(Callback):
    """Before each step, CE + current_weight·term by hand on the step's batch; after it, the step's loss."""

    def __init__(self) -> None:
        self.expected: list[tuple[float, float, float]] = []  # (CE, weighted term, unweighted term)
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        term = pl_module.loss_terms["center"]
        with torch.no_grad():
            logits = pl_module.backbone(batch["image"])  # a Linear: no BatchNorm, no dropout, same as in the step
            value = (logits - term.center).pow(2).sum(dim=1).mean()
            weight = 0.3 * (0.5 if trainer.global_step == 0 else 1.0)
            self.expected.append((float(F.cross_entropy(logits, batch["target"])), float(weight * value), float(value)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_fit_trains_on_ce_plus_the_weighted_term_and_updates_its_buffer():
    task = linear_task(loss_terms=[CenterTerm()])
    initial_center = task.loss_terms["center"].center.clone()
    record = HandComputedLoss()
    trainer = Trainer(max_steps=3, callbacks=[record], **FIT)
    trainer.fit(task, DigitsDataModule(batch_size=32))
    assert len(record.losses) == 3
    for (ce, weighted, _), loss in zip(record.expected, record.losses, strict=True):
        assert weighted > 0.05  # the term matters: a loss without it would fail the next line
        assert loss == pytest.approx(ce + weighted, rel=1e-5)
    term = task.loss_terms["center"]
    assert int(term.updates) == 3 and not torch.allclose(term.center, initial_center)
    # train/<name> is the unweighted term of the last step, beside the task's own metrics
    assert float(trainer.callback_metrics["train/center"]) == pytest.approx(record.expected[-1][2], rel=1e-5)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(record.losses[-1], rel=1e-5)


def test_validation_loss_is_compute_loss_alone():
    task = linear_task(loss_terms=[CenterTerm(weight=5.0)])
    trainer = Trainer(max_epochs=1, limit_train_batches=1, **{**FIT, "limit_val_batches": 1})
    data = DigitsDataModule(batch_size=32)
    trainer.fit(task, data)
    batch = next(iter(data.val_dataloader()))
    with torch.no_grad():
        expected = F.cross_entropy(task(batch["image"]), batch["target"])
    assert float(trainer.callback_metrics["val/loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert "train/center" in trainer.callback_metrics and "val/center" not in trainer.callback_metrics


def test_a_model_returning_a_dict_feeds_its_features_to_a_term():
    seed_everything(0, verbose=False)
    task = ImageClassifier(DictNet(), 10, loss_terms=[FeatureNorm(weight=0.1)])
    batch = digits_batch()
    out = task.training_step(batch, 0)
    with torch.no_grad():
        outputs = task.backbone(batch["image"])
    features_term = outputs["features"].pow(2).sum(dim=1).mean()
    assert float(features_term) > 0.1
    torch.testing.assert_close(out["loss"], F.cross_entropy(outputs["logits"], batch["target"]) + 0.1 * features_term)
    assert out["logits"].shape == (16, 10) and not out["logits"].requires_grad
    # the whole task runs on such a model: fit with validation, and predict
    trainer = Trainer(max_epochs=1, limit_train_batches=2, **{**FIT, "limit_val_batches": 1})
    trainer.fit(task, DigitsDataModule(batch_size=16))
    assert {"train/feature_norm", "val/acc", "val/ece"} <= set(trainer.callback_metrics)
    probabilities = task.predict_step(batch, 0)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(16))


def test_a_model_returning_a_dataclass_with_logits_feeds_its_fields_to_a_term():
    seed_everything(0, verbose=False)
    task = ImageClassifier(DataclassNet(), 10, loss_terms=[AttentionEntropy("attention_entropy", weight=0.5)])
    batch = digits_batch()
    out = task.training_step(batch, 0)
    with torch.no_grad():
        output = task.backbone(batch["image"])
    entropy = -(output.attention * output.attention.log()).sum(dim=1).mean()
    torch.testing.assert_close(out["loss"], F.cross_entropy(output.logits, batch["target"]) + 0.5 * entropy)


def test_model_outputs_accepts_three_forms_and_names_them_otherwise():
    logits = torch.zeros(2, 3)
    assert model_outputs(logits)["logits"] is logits
    given = {"logits": logits, "features": torch.ones(2, 4)}
    assert model_outputs(given) is given
    fields = model_outputs(NetOutput(logits, torch.ones(2, 4)))
    assert sorted(fields) == ["attention", "logits"] and fields["logits"] is logits
    Pair = namedtuple("Pair", ["logits", "hidden"])
    assert sorted(model_outputs(Pair(logits, torch.ones(1)))) == ["hidden", "logits"]
    for bad in ((logits, logits), {"features": logits}, [logits], {"logits": [0.0, 1.0]}):
        with pytest.raises(TypeError, match=r"a Tensor of \(B, C\) logits, a Mapping with a 'logits' entry"):
            model_outputs(bad)


def test_a_checkpoint_round_trip_keeps_the_terms_buffer(tmp_path):
    task = linear_task(loss_terms=[CenterTerm()])
    trainer = Trainer(max_steps=2, **FIT)
    trainer.fit(task, DigitsDataModule(batch_size=32))
    trained = task.loss_terms["center"].center.clone()
    assert not torch.allclose(trained, torch.linspace(-1.0, 1.0, 10))
    path = tmp_path / "task.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)  # hparams hold builtins only: no live term in them
    assert "loss_terms" not in checkpoint["hyper_parameters"] and "loss_terms" not in task.hparams
    assert {"loss_terms.center.center", "loss_terms.center.updates"} <= set(checkpoint["state_dict"])
    restored = ImageClassifier.load_from_checkpoint(
        path, backbone=nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), loss_terms=[CenterTerm()], weights_only=True
    )
    torch.testing.assert_close(restored.loss_terms["center"].center, trained, rtol=0, atol=0)
    assert int(restored.loss_terms["center"].updates) == 2


def test_duplicate_reserved_and_invalid_terms_are_refused():
    with pytest.raises(ValueError, match="Two loss terms are named 'center'"):
        linear_task(loss_terms=[CenterTerm(), CenterTerm(weight=1.0)])
    task = linear_task(loss_terms=[CenterTerm()])
    with pytest.raises(ValueError, match="Two loss terms are named 'center'"):
        task.add_loss_term(CenterTerm())
    with pytest.raises(ValueError, match="may not be named 'loss'"):
        task.add_loss_term(CenterTerm(name="loss"))
    with pytest.raises(TypeError, match="LossTerm modules"):
        task.add_loss_term(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="Python identifier"):
        CenterTerm(name="train/center")
    with pytest.raises(ValueError, match="finite number"):
        CenterTerm(weight=float("nan"))
    assert list(task.loss_terms) == ["center"]


def test_add_loss_term_after_construction_reaches_the_loss():
    task = linear_task()
    batch = digits_batch()
    plain = task.training_step(batch, 0)["loss"]
    task.add_loss_term(FeatureNorm("logits", weight=0.2, name="logit_norm"))
    with torch.no_grad():
        logits = task(batch["image"])
    torch.testing.assert_close(task.training_step(batch, 0)["loss"], plain + 0.2 * logits.pow(2).sum(dim=1).mean())


def test_a_subclass_loss_gets_the_terms_too():
    seed_everything(0, verbose=False)
    task = GrokkingClassifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), 10, loss_terms=[CenterTerm()])
    batch = digits_batch()
    with torch.no_grad():
        logits = task(batch["image"])
    mse = F.mse_loss(logits, F.one_hot(batch["target"], 10).float())
    center = (logits - torch.linspace(-1.0, 1.0, 10)).pow(2).sum(dim=1).mean()
    torch.testing.assert_close(task.training_step(batch, 0)["loss"], mse + 0.15 * center)  # step 0: half weight


class IgnoresTerms(ImageClassifier):
    """A subclass whose own training_step forgets the loss terms."""

    def training_step(self, batch, batch_idx):
        logits, loss = self.logits_and_loss(batch)
        return self.log_training(loss, logits, batch)


def test_a_training_step_that_drops_the_terms_is_named():
    task = IgnoresTerms(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), 10, loss_terms=[CenterTerm()])
    with pytest.raises(RuntimeError, match=r"loss terms \['center'\] but its training_step never added them"):
        Trainer(max_steps=1, **FIT).fit(task, DigitsDataModule(batch_size=16))


def test_lightning_cli_builds_the_terms_and_the_checkpoint_rebuilds_them(tmp_path, monkeypatch):
    from lightning_regs.cli import LightningRegsCLI

    monkeypatch.setattr(sys, "argv", ["lightning-regs"])
    term = "{class_path: tests.test_loss_terms.CenterTerm, init_args: {weight: 0.2}}"
    LightningRegsCLI(
        args=[
            "fit",
            "--model=ImageClassifier",
            "--model.backbone=SmallCNN",
            "--model.num_classes=10",
            f"--model.loss_terms=[{term}]",
            "--data=DigitsDataModule",
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    (path,) = tmp_path.rglob("*.ckpt")
    saved = torch.load(path, weights_only=True)
    (config,) = saved["hyper_parameters"]["loss_terms"]  # the config, as the backbone's: builtins only
    assert config["class_path"] == "tests.test_loss_terms.CenterTerm" and config["init_args"]["weight"] == 0.2
    restored = ImageClassifier.load_from_checkpoint(path, weights_only=True)
    term = restored.loss_terms["center"]
    assert isinstance(term, CenterTerm) and term.weight == 0.2 and int(term.updates) == 2
    torch.testing.assert_close(term.center, saved["state_dict"]["loss_terms.center.center"], rtol=0, atol=0)


# LegoGCD's terms ------------------------------------------------------------------------------------------------


class Host(LegoGCDMixin):
    def __init__(self) -> None:
        super().__init__()
        self.setup_lego_gcd(4, known_classes=[3, 1], prior_momentum=0.5, ler_threshold=0.3)


def _gcd_logits() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.rand(12, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1  # 6 images x 2 views
    return logits, torch.tensor([True, False, False, True, False, False])


def test_a_state_dict_with_the_old_prior_key_loads_into_the_ler_term():
    host = Host()
    assert list(host.state_dict()) == ["prior_ema.prior"]  # q̂ once, at its old key: not again under the terms
    old = {"prior_ema.prior": torch.tensor([0.7, 0.1, 0.1, 0.1])}  # what a checkpoint before the terms holds
    host.load_state_dict(old)  # strict
    ler = host.lego_gcd_loss_terms["ler"]
    torch.testing.assert_close(ler.prior_ema.prior, old["prior_ema.prior"])
    logits, labelled = _gcd_logits()
    expected = local_entropy_regularization(logits, labelled.repeat(2), [3, 1], 0.3, prior=old["prior_ema.prior"])
    uniform = local_entropy_regularization(logits, labelled.repeat(2), [3, 1], 0.3, prior=torch.full((4,), 0.25))
    assert not torch.allclose(expected, uniform)  # the loaded q̂ changes LER
    torch.testing.assert_close(host.lego_gcd_terms(logits, labelled.repeat(2))["ler"], expected)
    # the term updates the q̂ the module saves
    host.update_logit_prior(logits)
    torch.testing.assert_close(host.state_dict()["prior_ema.prior"], ler.prior_ema.prior)
    assert not torch.equal(host.state_dict()["prior_ema.prior"], old["prior_ema.prior"])


def test_the_gcd_classifier_keeps_its_checkpoint_keys():
    from tests.test_gcd_classifier import make_task

    task = make_task()
    keys = set(task.state_dict())
    assert "prior_ema.prior" in keys and not any(key.startswith(("loss_terms", "_lego")) for key in keys)
    saved = {**task.state_dict(), "prior_ema.prior": torch.tensor([0.4, 0.3, 0.2, 0.1])}
    task.load_state_dict(saved)
    assert task.lego_gcd_loss_terms["ler"].prior_ema.prior.tolist() == pytest.approx([0.4, 0.3, 0.2, 0.1])


def test_legogcd_terms_read_the_batch_and_stand_alone():
    logits, labelled = _gcd_logits()
    term = LocalEntropyTerm(4, [3, 1], threshold=0.3, prior_momentum=0.5)
    expected = local_entropy_regularization(logits, labelled.repeat(2), [3, 1], 0.3, prior=torch.full((4,), 0.25))
    # one flag per image from "labeled", or target >= 0 when the batch has no "labeled"
    torch.testing.assert_close(term({"logits": logits}, {"labeled": labelled}), expected)
    target = torch.where(labelled, torch.tensor(1), torch.tensor(-1))
    torch.testing.assert_close(term({"logits": logits}, {"image": torch.zeros(6), "target": target}), expected)
    term.update({"logits": logits}, None)
    torch.testing.assert_close(term.prior_ema.prior, 0.5 * 0.25 + 0.5 * logits.softmax(dim=1).mean(dim=0))
    dkl = DualViewKLTerm(form="official")
    torch.testing.assert_close(dkl({"logits": logits}, None), dual_view_kl(*logits.chunk(2), form="official"))
    with pytest.raises(ValueError, match=r"view-major logits \(2B, K\)"):
        dkl({"logits": logits[:5]}, None)
    with pytest.raises(ValueError, match="known_classes"):
        LocalEntropyTerm(4, [4])
