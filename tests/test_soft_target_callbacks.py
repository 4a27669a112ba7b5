"""SoftTargetCallback, LabelSmoothing and their composition with PS-KD: the equations and the batch contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer, seed_everything

from lightning_regs.callbacks import LabelSmoothing, ProgressiveSelfKD, SoftTargetCallback
from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.functional.soft_targets import label_smoothing_targets, target_distribution
from lightning_regs.models import SmallCNN
from tests.helpers.pskd import RecordingClassifier
from tests.helpers.trainers import QUIET


def test_label_smoothing_targets_give_the_loss_of_cross_entropy_with_label_smoothing():
    logits = torch.randn(16, 7, dtype=torch.float64)
    labels = torch.randint(0, 7, (16,))
    for epsilon in (0.0, 0.1, 0.5, 1.0):
        smoothed = label_smoothing_targets(labels, epsilon, 7).double()
        expected = F.cross_entropy(logits, labels, label_smoothing=epsilon)
        torch.testing.assert_close(-(smoothed * logits.log_softmax(-1)).sum(-1).mean(), expected)
        torch.testing.assert_close(smoothed.sum(-1), torch.ones(16, dtype=torch.float64))
    with pytest.raises(ValueError, match="smoothing"):
        label_smoothing_targets(labels, 1.5, 7)
    with pytest.raises(ValueError, match=r"\(B, 7\)"):
        target_distribution(torch.rand(3, 5), 7)


def test_the_callback_rewrites_target_keeps_labels_once_and_refuses_soft_data():
    batch = {"target": torch.tensor([2, 0, 1])}
    LabelSmoothing(0.3, num_classes=3).soften(None, None, batch)
    torch.testing.assert_close(batch["target"], label_smoothing_targets(torch.tensor([2, 0, 1]), 0.3, 3))
    assert batch["hard_target"].tolist() == [2, 0, 1]
    LabelSmoothing(0.5, num_classes=3).soften(None, None, batch)  # a second one refines the first's target
    torch.testing.assert_close(
        batch["target"], label_smoothing_targets(label_smoothing_targets(torch.tensor([2, 0, 1]), 0.3, 3), 0.5, 3)
    )
    assert batch["hard_target"].tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="already soft in the data"):
        LabelSmoothing(0.1, num_classes=3).soften(None, None, {"target": torch.rand(2, 3)})
    with pytest.raises(TypeError, match="dict batches"):
        LabelSmoothing(0.1, num_classes=3).soften(None, None, (torch.zeros(2), torch.zeros(2)))
    with pytest.raises(ValueError, match="num_classes=C"):
        LabelSmoothing(0.1).soften(None, None, {"target": torch.tensor([0])})


class Wrong(SoftTargetCallback):
    def refine_targets(self, trainer, pl_module, batch, labels, targets):
        return targets[:, :2]


def test_a_refinement_of_the_wrong_shape_is_named():
    with pytest.raises(ValueError, match=r"returned shape \(2, 2\); expected \(2, 3\)"):
        Wrong(num_classes=3).soften(None, None, {"target": torch.tensor([0, 1])})


def record(tmp_path, callbacks) -> RecordingClassifier:
    seed_everything(0)
    task = RecordingClassifier(SmallCNN(width=8), num_classes=10, lr=0.05)
    trainer = Trainer(max_epochs=2, limit_train_batches=8, limit_val_batches=0, default_root_dir=tmp_path,
                      callbacks=callbacks, **QUIET)  # fmt: skip
    trainer.fit(task, DigitsDataModule(batch_size=32))
    return task


@pytest.mark.parametrize("order", ["pskd_first", "smoothing_first"])
def test_pskd_and_label_smoothing_compose_in_the_documented_order(tmp_path, order):
    epsilon, alpha_T = 0.2, 0.8
    pskd = ProgressiveSelfKD(alpha_T=alpha_T)
    callbacks = [pskd, LabelSmoothing(epsilon)] if order == "pskd_first" else [LabelSmoothing(epsilon), pskd]
    task = record(tmp_path, callbacks)
    last_seen: dict[int, torch.Tensor] = {}
    checked = 0
    for step in task.steps:
        one_hot = F.one_hot(step["labels"], 10).float()
        smoothed = (1 - epsilon) * one_hot + epsilon / 10
        if step["epoch"] == 1:
            alpha = alpha_T * 2 / 2
            seen = torch.tensor([i in last_seen for i in step["index"].tolist()]).unsqueeze(1)
            previous = torch.stack([last_seen.get(i, torch.zeros(10)) for i in step["index"].tolist()])
            if order == "pskd_first":
                refined = torch.where(seen, (1 - alpha) * one_hot + alpha * previous, one_hot)
                expected = (1 - epsilon) * refined + epsilon / 10
            else:
                expected = torch.where(seen, (1 - alpha) * smoothed + alpha * previous, smoothed)
            torch.testing.assert_close(step["target"], expected, rtol=0, atol=1e-6)
            checked += int(seen.sum())
        else:
            torch.testing.assert_close(step["target"], smoothed, rtol=0, atol=1e-7)
        for row, index in enumerate(step["index"].tolist()):
            last_seen[index] = step["probabilities"][row]
    assert checked > 0


def test_smoothing_twice_is_warned_and_unlabelled_rows_are_named(tmp_path):
    from lightning_regs.tasks import ImageClassifier

    task = ImageClassifier(SmallCNN(width=8), num_classes=10, label_smoothing=0.1)
    trainer = Trainer(max_steps=1, limit_val_batches=0, default_root_dir=tmp_path, callbacks=[LabelSmoothing(0.1)],
                      **QUIET)  # fmt: skip
    with pytest.warns(UserWarning, match="smoothed twice"):
        trainer.fit(task, DigitsDataModule(batch_size=8))
    with pytest.raises(ValueError, match=r"class ids in \[-1, 1\] but there are 3 classes"):
        LabelSmoothing(0.1, num_classes=3).soften(None, None, {"target": torch.tensor([1, -1])})


class _NoForward(LightningModule):
    """A module that computes its logits inside training_step only: no forward to probe."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(64, 10)

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self.layer(batch["image"].flatten(1)), batch["target"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_num_classes_unknown_everywhere_is_a_named_error() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_regs.datamodules import IndexedDataset

    data = IndexedDataset(TensorDataset(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))))
    trainer = Trainer(max_steps=1, callbacks=[LabelSmoothing(0.1)], **QUIET)
    with pytest.raises(ValueError, match=r"did not give \(B, C\) logits.*Pass LabelSmoothing\(num_classes=C\)"):
        trainer.fit(_NoForward(), DataLoader(data, batch_size=4))
