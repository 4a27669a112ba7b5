import itertools

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.functional import classification_loss
from lightning_regs.models import SmallCNN
from lightning_regs.tasks import ImageClassifier
from tests.helpers.loggers import RecordingLogger
from tests.helpers.trainers import QUIET


def make_task(**kwargs) -> ImageClassifier:
    kwargs.setdefault("lr", 0.05)
    return ImageClassifier(SmallCNN(num_classes=10, width=8), num_classes=10, **kwargs)


def test_training_step_returns_loss_and_detached_logits_for_hard_and_soft_targets():
    task = make_task()
    image = torch.randn(4, 1, 8, 8)
    hard = torch.tensor([1, 2, 3, 4])
    soft = torch.rand(4, 10).softmax(-1)
    for target in (hard, soft):
        out = task.training_step({"image": image, "target": target, "index": torch.arange(4)}, 0)
        assert out["logits"].shape == (4, 10) and not out["logits"].requires_grad
        torch.testing.assert_close(out["loss"], classification_loss(task(image), target))
        assert out["loss"].requires_grad


def test_fit_logs_the_documented_metrics_and_learns(tmp_path):
    seed_everything(0)
    logger = RecordingLogger()
    trainer = Trainer(max_epochs=3, default_root_dir=tmp_path, **{**QUIET, "logger": logger}, log_every_n_steps=5)
    trainer.fit(make_task(), DigitsDataModule(batch_size=64))
    trainer.test(trainer.lightning_module, DigitsDataModule(batch_size=64), verbose=False)
    assert {
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/ece",
        "test/acc",
        "test/ece",
        "test/loss",
    } <= (logger.names())
    assert logger.series("val/acc")[-1] > 0.8
    assert 0.0 <= logger.series("val/ece")[-1] <= 1.0


def test_ece_matches_an_independent_computation():
    task = make_task(ece_bins=15)
    logits = torch.randn(200, 10) * 3
    target = torch.randint(0, 10, (200,))
    probabilities = logits.softmax(-1)
    task.metrics["val_ece"].update(probabilities, target)
    confidence, predicted = probabilities.max(-1)
    correct = (predicted == target).float()
    edges = torch.linspace(0, 1, 16)
    expected = 0.0
    for low, high in itertools.pairwise(edges):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            expected += inside.float().mean() * (confidence[inside].mean() - correct[inside].mean()).abs()
    assert task.metrics["val_ece"].compute().item() == pytest.approx(float(expected), abs=1e-6)


def test_step_schedule_reaches_the_optimizer(tmp_path):
    trainer = Trainer(max_epochs=3, default_root_dir=tmp_path, limit_train_batches=4, limit_val_batches=0, **QUIET)
    task = make_task(scheduler="step", milestones=[2], gamma=0.1, lr=0.1)
    lrs = []

    class RecordLR(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer.callbacks.append(RecordLR())
    trainer.fit(task, DigitsDataModule())
    assert lrs == pytest.approx([0.1] * 8 + [0.01] * 4)


def test_num_classes_mismatches_are_named(tmp_path):
    with pytest.raises(ValueError, match="produces 10 logits but num_classes=5"):
        ImageClassifier(SmallCNN(num_classes=10), num_classes=5)
    trainer = Trainer(max_epochs=1, default_root_dir=tmp_path, **QUIET)
    with pytest.raises(ValueError, match="has 10 classes but the model was built with num_classes=12"):
        trainer.fit(
            ImageClassifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 12)), 12),
            DigitsDataModule(),
        )


def test_logits_of_the_wrong_width_and_out_of_range_targets_are_named():
    task = ImageClassifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 7)), num_classes=10)
    with pytest.raises(ValueError, match=r"expected \(batch, 10\)"):
        task.training_step({"image": torch.randn(2, 1, 8, 8), "target": torch.tensor([0, 1])}, 0)
    task = make_task()
    with pytest.raises(ValueError, match=r"train batch 0 holds the label 12 .* must lie in \[0, 9\]"):
        task.training_step({"image": torch.randn(2, 1, 8, 8), "target": torch.tensor([0, 12])}, 0)


def test_batches_without_the_contract_keys_are_named():
    with pytest.raises(TypeError, match="'image'"):
        make_task().training_step({"x": torch.randn(2, 1, 8, 8), "y": torch.tensor([0, 1])}, 0)


def test_tuple_batches_work():
    out = make_task().training_step((torch.randn(2, 1, 8, 8), torch.tensor([0, 1])), 0)
    assert out["logits"].shape == (2, 10)
