"""The local-learning loop: gradient isolation, K=1 equals end-to-end, resume, bad configurations."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.functional.classification import classification_loss
from lightning_regs.local_learning import EndToEndWarning
from lightning_regs.local_learning.splits import module_ranges
from lightning_regs.models import resnet20
from lightning_regs.tasks.local_learning_classifier import LocalLearningClassifier
from tests.helpers.trainers import QUIET


class CheckIsolation(Callback):
    """At the first optimizer step, compare every gradient with the gradient of its own local loss alone."""

    def __init__(self) -> None:
        self.checked = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch = batch

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.checked:
            return
        image, target = self.batch["image"], self.batch["target"]
        layers = pl_module.backbone.layers
        ranges = module_ranges(pl_module.split_points, len(layers))
        h = image
        for j, (a, b) in enumerate(ranges):
            module = layers[a:b]
            out = module(h.detach())
            if j < len(ranges) - 1:
                head = pl_module.aux_heads[str(j)]
                loss = head(out, target, image)
            else:
                head = pl_module.backbone.head
                loss = classification_loss(head(out), target)
            params = [p for p in [*module.parameters(), *head.parameters()] if p.requires_grad]
            expected = torch.autograd.grad(loss, params, allow_unused=True)
            for p, g in zip(params, expected, strict=True):
                if g is None:  # e.g. InfoPro's decoder where lambda_recon is 0
                    assert p.grad is None
                else:
                    torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)
                    self.checked += 1
            h = out
        if len(ranges) == 1:  # K = 1: plain end-to-end training
            params = list(pl_module.backbone.parameters())
            expected = torch.autograd.grad(classification_loss(pl_module.backbone(image), target), params)
            for p, g in zip(params, expected, strict=True):
                torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("K", "head", "man", "task_loss"),
    [(3, "dgl", False, "cross_entropy"), (3, "infopro", True, "cross_entropy"), (3, "infopro", False, "contrast"),
     (1, "dgl", False, "cross_entropy")],
    ids=["dgl", "infopro-man", "infopro-contrast", "K1"],
)  # fmt: skip
def test_each_module_gets_the_gradient_of_its_own_local_loss_alone(tmp_path, K, head, man, task_loss):
    seed_everything(0)
    with pytest.warns(EndToEndWarning) if K == 1 else contextlib.nullcontext():  # K = 1 says it is end-to-end
        task = LocalLearningClassifier(
            resnet20(), 10, K=K, split="auto", head=head, man=man, task_loss=task_loss, input_shape=(3, 8, 8)
        )
    check = CheckIsolation()
    trainer = Trainer(max_steps=1, limit_val_batches=0, default_root_dir=tmp_path, callbacks=[check], **QUIET)
    trainer.fit(task, DigitsDataModule(batch_size=16, channels=3))
    assert check.checked > 0
    assert trainer.global_step == 1


@pytest.mark.parametrize(("head", "man"), [("dgl", False), ("infopro", True)])
def test_the_auto_split_probe_leaves_the_global_rng_and_the_heads_initialization_alone(head, man):
    def build(split):
        seed_everything(0)
        task = LocalLearningClassifier(resnet20(), 10, K=3, split=split, head=head, man=man, input_shape=(3, 8, 8))
        return task, torch.random.get_rng_state()

    auto, auto_rng = build("auto")
    explicit, explicit_rng = build(list(auto.split_points))
    assert explicit.split_points == auto.split_points
    assert torch.equal(auto_rng, explicit_rng)
    auto_heads, explicit_heads = auto.aux_heads.state_dict(), explicit.aux_heads.state_dict()
    assert auto_heads.keys() == explicit_heads.keys()
    for key, value in auto_heads.items():
        assert torch.equal(value, explicit_heads[key]), key


def test_evaluation_uses_the_backbone_only_and_export_drops_the_heads():
    task = LocalLearningClassifier(resnet20(), 10, K=2, split=["s1b0"], input_shape=(3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    task.eval()
    assert torch.equal(task(x), task.backbone(x))
    exported = task.export_state_dict()
    assert exported and not any(k.startswith("aux_heads") for k in exported)
    assert set(exported) == {k for k in task.state_dict() if not k.startswith("aux_heads")}


def test_turning_automatic_optimization_back_on_is_named(tmp_path):
    task = LocalLearningClassifier(resnet20(), 10, K=2, split=["s1b0"], input_shape=(3, 8, 8))
    task.automatic_optimization = True
    trainer = Trainer(max_steps=1, default_root_dir=tmp_path, **QUIET)
    with pytest.raises(RuntimeError, match="automatic_optimization"):
        trainer.fit(task, DigitsDataModule(batch_size=16, channels=3))


def test_unsupported_strategies_and_bad_heads_are_named():
    task = LocalLearningClassifier(resnet20(), 10, K=2, split=["s1b0"], input_shape=(3, 8, 8))
    task.trainer = SimpleNamespace(strategy=SimpleNamespace())
    with pytest.raises(RuntimeError, match="single-device and DDP"):
        task._check_can_train_locally()
    with pytest.raises(ValueError, match="Unknown head"):
        LocalLearningClassifier(resnet20(), 10, K=2, head="nope")
    with pytest.raises(ValueError, match="applies to InfoPro heads"):
        LocalLearningClassifier(resnet20(), 10, K=2, head="dgl", task_loss="contrast")
    with pytest.raises(ValueError, match="never be trained"):
        LocalLearningClassifier(resnet20(), 10, K=3, split=[2, 5], head="infopro", lambdas=(1, 1, 0, 0))
    with pytest.raises(TypeError, match="does not know how to split Linear into layers"):
        LocalLearningClassifier(torch.nn.Linear(3, 10), 10, K=2)
    with pytest.raises(ValueError, match="larger than"):
        LocalLearningClassifier(resnet20(), 10, K=11, split="auto", input_shape=(3, 8, 8))


class GradNorm(Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


@pytest.mark.parametrize("clip", [None, 0.01])
def test_gradient_clipping_is_applied_before_the_step(tmp_path, clip):
    seed_everything(0)
    task = LocalLearningClassifier(resnet20(), 10, K=2, split=["s1b0"], input_shape=(3, 8, 8), gradient_clip_val=clip)
    probe = GradNorm()
    trainer = Trainer(max_steps=1, limit_val_batches=0, default_root_dir=tmp_path, callbacks=[probe], **QUIET)
    trainer.fit(task, DigitsDataModule(batch_size=16, channels=3))
    if clip is None:
        assert probe.norm > 0.1
    else:
        torch.testing.assert_close(probe.norm, torch.tensor(clip), rtol=1e-4, atol=0)
