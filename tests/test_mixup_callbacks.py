"""MixUp, CutMix and MixUpCutMix as callbacks: composition with soft-target callbacks, PS-KD, loss mode, errors."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from lightning_regs.batch import CLEAN_IMAGE, HARD_TARGET, MIX_LAMBDA, MIX_PARTNER, SAMPLE_TARGET, class_ids
from lightning_regs.callbacks import (
    CutMix,
    InputRewritingCallback,
    LabelSmoothing,
    MixUp,
    MixUpCutMix,
    ProgressiveSelfKD,
    Rewrite,
    SoftTargetCallback,
)
from lightning_regs.datamodules import DigitsDataModule, IndexedDataset
from lightning_regs.models import MLP
from lightning_regs.tasks import ImageClassifier
from tests.helpers.doc_blocks import block, run_python

C = 5


class TableRefine(SoftTargetCallback):
    """PS-KD's Eq. 6 with a fixed per-sample table: ``(1 − α)·t + α·p[index]``."""

    def __init__(self, table: torch.Tensor, alpha: float) -> None:
        super().__init__(num_classes=table.shape[1])
        self.table, self.alpha = table, alpha

    def refine_targets(self, trainer, pl_module, batch, labels, targets):
        return (1 - self.alpha) * targets + self.alpha * self.table[batch["index"]]


def make_batch(n: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    return {
        "image": torch.randn(n, 1, 8, 8, generator=g),
        "target": torch.randint(0, C, (n,), generator=g),
        "index": torch.randperm(20, generator=g)[:n],
    }


def run(callbacks, batch):
    for callback in callbacks:
        if isinstance(callback, MixUpCutMix):
            callback.rewrite_batch(None, None, batch)
        else:
            callback.soften(None, None, batch)
    return batch


@pytest.mark.parametrize("make_mixer", [MixUp, CutMix, MixUpCutMix])
@pytest.mark.parametrize("position", [0, 1, 2])
def test_soft_target_callbacks_in_any_order_give_the_mixed_refined_target(make_mixer, position):
    table = torch.softmax(torch.randn(20, C, generator=torch.Generator().manual_seed(0)), 1)
    others = [TableRefine(table, 0.3), LabelSmoothing(0.1, num_classes=C)]
    mixer = make_mixer(num_classes=C, seed=5)
    callbacks = [*others[:position], mixer, *others[position:]]
    batch = run(callbacks, make_batch())
    y, index = batch[HARD_TARGET], batch["index"]
    own = (1 - 0.3) * F.one_hot(y, C).float() + 0.3 * table[index]  # PS-KD, then label smoothing
    own = own * 0.9 + 0.1 / C
    partner, lam = batch[MIX_PARTNER], batch[MIX_LAMBDA][:, None]
    torch.testing.assert_close(batch[SAMPLE_TARGET], own)
    torch.testing.assert_close(batch["target"], lam * own + (1 - lam) * own[partner])
    torch.testing.assert_close(batch["target"].sum(1), torch.ones(6))


def test_label_smoothing_before_or_after_mixing_is_the_smoothed_mixture():
    for order in ("before", "after"):
        mixer = MixUp(1.0, num_classes=C, seed=3)
        smoothing = LabelSmoothing(0.2, num_classes=C)
        batch = run([smoothing, mixer] if order == "before" else [mixer, smoothing], make_batch())
        mixed = batch[MIX_LAMBDA][:, None] * F.one_hot(batch[HARD_TARGET], C)
        mixed = mixed + (1 - batch[MIX_LAMBDA][:, None]) * F.one_hot(batch[HARD_TARGET][batch[MIX_PARTNER]], C)
        torch.testing.assert_close(batch["target"], 0.8 * mixed + 0.2 / C)


def test_the_rewritten_batch_keeps_the_clean_images_and_the_labels():
    batch = make_batch(7)
    image, labels = batch["image"], batch["target"]
    CutMix(num_classes=C, per_sample=True).rewrite_batch(None, None, batch)
    assert batch[CLEAN_IMAGE] is image and torch.equal(batch[HARD_TARGET], labels)
    assert not torch.equal(batch["image"], image) and torch.equal(class_ids(batch), labels)
    assert len(set(batch[MIX_LAMBDA].tolist())) > 1  # one λ per row


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_any_batch_size_odd_and_one_included(batch_size):
    batch = make_batch(batch_size)
    MixUpCutMix(num_classes=C).rewrite_batch(None, None, batch)
    assert batch["target"].shape == (batch_size, C)
    if batch_size == 1:  # paired with itself: unchanged
        assert torch.allclose(batch["image"], batch[CLEAN_IMAGE])


def test_prob_leaves_batches_unmixed_and_soft_data_targets_are_mixed_as_given():
    mixer = MixUp(0.4, prob=0.0, num_classes=C)
    batch = make_batch()
    mixer.rewrite_batch(None, None, batch)
    assert MIX_PARTNER not in batch and batch["target"].dtype == torch.long
    one_hot = {"image": torch.randn(4, 3), "target": torch.eye(4)}  # one-hot from the data, no labels
    MixUp(0.4, num_classes=4).rewrite_batch(None, None, one_hot)
    assert torch.allclose(one_hot["target"].sum(1), torch.ones(4)) and HARD_TARGET not in one_hot


def test_the_draws_are_a_checkpointed_state():
    first = MixUp(0.4, num_classes=C, seed=11)
    first.rewrite_batch(None, None, make_batch())
    state = first.state_dict()
    resumed = MixUp(0.4, num_classes=C, seed=99)
    with pytest.warns(UserWarning, match="seed=11"):
        resumed.load_state_dict(state)
    a, b = make_batch(), make_batch()
    first.rewrite_batch(None, None, a)
    resumed.rewrite_batch(None, None, b)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a[MIX_PARTNER], b[MIX_PARTNER])


def test_bad_arguments_and_batches_are_named():
    with pytest.raises(ValueError, match=r"alpha.*must be a finite number > 0"):
        MixUp(0.0)
    with pytest.raises(ValueError, match="both 0"):
        MixUpCutMix(0.0, 0.0)
    with pytest.raises(ValueError, match="mode must be"):
        CutMix(mode="both")
    with pytest.raises(ValueError, match="prob"):
        MixUp(prob=1.5)
    with pytest.raises(ValueError, match=r"images \(B, C, H, W\)"):
        CutMix(num_classes=C).rewrite_batch(None, None, {"image": torch.randn(4, 64), "target": torch.arange(4)})
    with pytest.raises(TypeError, match="IndexedDataset"):
        MixUp().rewrite_batch(None, None, {"x": torch.zeros(2)})
    with pytest.raises(TypeError, match="mode='targets'"):
        MixUp(mode="loss").rewrite_batch(None, None, [torch.zeros(2, 3), torch.tensor([0, 1])])


def fit(callbacks, max_steps: int = 6, task=None, **kwargs) -> tuple[Trainer, ImageClassifier]:
    torch.manual_seed(0)
    task = task or ImageClassifier(MLP(in_features=64, num_classes=10, width=16), num_classes=10, lr=0.05)
    trainer = Trainer(
        max_steps=max_steps, callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, **kwargs,
    )  # fmt: skip
    trainer.fit(task, DigitsDataModule(batch_size=16))
    return trainer, task


def test_loss_mode_trains_exactly_as_target_mode_for_cross_entropy():
    # cross-entropy is linear in the target: λ·CE(y_i) + (1 − λ)·CE(y_j) = CE(λ·y_i + (1 − λ)·y_j)
    _, by_targets = fit([MixUp(0.4, seed=1)])
    _, by_loss = fit([MixUp(0.4, seed=1, mode="loss")])
    for a, b in zip(by_targets.parameters(), by_loss.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mixer", [CutMix, MixUpCutMix])
def test_cutmix_in_loss_mode_trains_as_target_mode(mixer):
    # one box per batch: one corrected λ per batch, so a batch-mean loss interpolates (found by a new user)
    _, by_targets = fit([mixer(seed=2)])
    _, by_loss = fit([mixer(seed=2, mode="loss")])
    for a, b in zip(by_targets.parameters(), by_loss.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_cutmix_draws_one_box_per_batch_unless_per_sample():
    batch = make_batch(8)
    CutMix(num_classes=C, seed=1).rewrite_batch(None, None, batch)
    assert len(set(batch[MIX_LAMBDA].tolist())) == 1
    changed = (batch["image"] != batch[CLEAN_IMAGE]).flatten(1)
    moved = batch[MIX_PARTNER] != torch.arange(8)
    assert len({tuple(row.nonzero().flatten().tolist()) for row in changed[moved]}) == 1  # the same pixels
    with pytest.raises(ValueError, match="per_sample=False"):
        fit([CutMix(per_sample=True, mode="loss")])


def test_two_mixers_and_loss_mode_without_interpolation_are_refused():
    with pytest.raises(ValueError, match="MixUpCutMix"):
        fit([MixUp(), CutMix()])
    with pytest.raises(ValueError, match="interpolates_mixed_loss"):
        fit([MixUp(mode="loss")], task=OwnClassifier())


def test_pskd_stores_the_clean_images_prediction_not_the_mixed_one():
    trainer, task = fit([MixUp(1.0, seed=2), ProgressiveSelfKD(alpha_T=0.8, total_epochs=2), LastBatch()], max_steps=3)
    pskd = trainer.callbacks[1]
    batch = LastBatch.of(trainer)
    task.train()
    with torch.no_grad():
        clean = task(batch[CLEAN_IMAGE]).softmax(1)
        mixed = task(batch["image"]).softmax(1)
    stored = pskd.table.read(batch["index"])
    torch.testing.assert_close(stored, clean, atol=1e-6, rtol=1e-5)  # weights after the step, clean images
    assert not torch.allclose(stored, mixed, atol=1e-3)


def test_pskd_can_refuse_rewritten_inputs():
    with pytest.raises(ValueError, match="rewritten_inputs='clean_forward'"):
        fit([MixUp(), ProgressiveSelfKD(total_epochs=2, rewritten_inputs="error")], max_steps=1)


def test_train_acc_credits_both_mixed_labels():
    trainer, _ = fit([MixUp(1.0, seed=4), LastBatch()], max_steps=1)
    batch, logits = LastBatch.of(trainer), trainer.callbacks[1].logits
    credit = torch.where(logits.argmax(1) == batch[HARD_TARGET], batch[MIX_LAMBDA], 0.0)
    credit = credit + torch.where(logits.argmax(1) == batch[HARD_TARGET][batch[MIX_PARTNER]], 1 - batch[MIX_LAMBDA], 0)
    torch.testing.assert_close(trainer.callback_metrics["train/acc"], credit.mean())


class LastBatch(Callback):
    """Keeps the last training batch (as the step saw it) and its logits."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batch, self.logits = batch, outputs["logits"]

    @staticmethod
    def of(trainer: Trainer) -> dict:
        recorder = next((c for c in trainer.callbacks if isinstance(c, LastBatch)), None)
        if recorder is None:
            raise AssertionError("no LastBatch callback")
        return recorder.batch


class OwnClassifier(LightningModule):
    """A researcher's own module, as the MixUp card shows it: (x, y) batches, cross-entropy, no library task."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = (batch["image"], batch["target"]) if isinstance(batch, dict) else batch
        logits = self(x)
        return {"loss": F.cross_entropy(logits, y), "logits": logits.detach()}  # y: ids, or (B, C) once mixed

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def digits_pairs(indexed: bool) -> DataLoader:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    data = TensorDataset(x, torch.tensor(digits.target))
    return DataLoader(IndexedDataset(data) if indexed else data, batch_size=32, shuffle=True)


def test_own_module_on_x_y_pairs_trains_with_mixup():
    trainer = Trainer(max_epochs=2, callbacks=[MixUp(alpha=0.2)], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(OwnClassifier(), digits_pairs(indexed=False))
    assert trainer.global_step == 2 * 57 and torch.isfinite(trainer.callback_metrics.get("loss", torch.tensor(0.0)))


def test_own_module_trains_with_mixup_pskd_and_label_smoothing_in_one_trainer():
    callbacks = [MixUp(alpha=0.2), ProgressiveSelfKD(alpha_T=0.8), LabelSmoothing(0.1)]
    trainer = Trainer(max_epochs=2, callbacks=callbacks, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(OwnClassifier(), digits_pairs(indexed=True))
    assert bool(callbacks[1].table.seen.all())


def test_contributings_rewriting_example_runs_as_written():
    code = block("CONTRIBUTING.md", "tested-rewriting-example")
    namespace = run_python(code, "CONTRIBUTING.md", "contributing_rewriting_example")
    assert namespace["batch"]["image"].shape == (2, 1, 1, 4)


def _resnet18_epoch(callbacks) -> ImageClassifier:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    task = ImageClassifier(resnet18(num_classes=10), 10, lr=0.05)
    data = TensorDataset(torch.randn(48, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.arange(48) % 10)
    trainer = Trainer(max_epochs=1, callbacks=callbacks, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(task, DataLoader(IndexedDataset(data), batch_size=16))
    return task


def test_pskds_clean_forward_leaves_batchnorm_statistics_and_training_untouched():
    # In epoch 0 PS-KD only stores predictions: with a side-effect-free clean forward, a torchvision resnet18 (with
    # BatchNorm) trained with MixUp + PS-KD ends exactly where MixUp alone ends, running statistics included.
    alone = _resnet18_epoch([MixUp(alpha=1.0, seed=3)])
    with_pskd = _resnet18_epoch([MixUp(alpha=1.0, seed=3), ProgressiveSelfKD(alpha_T=0.8)])
    for (name, a), (_, b) in zip(alone.state_dict().items(), with_pskd.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_batchs_draws_do_not_depend_on_earlier_batch_sizes():
    # ranks whose last batches differ in size still agree on the next batch's λ (DDP with uneven loaders)
    a, b = MixUp(0.4, num_classes=C, seed=3), MixUp(0.4, num_classes=C, seed=3)
    a.rewrite_batch(None, None, make_batch(6))
    b.rewrite_batch(None, None, make_batch(3))
    first, second = make_batch(6), make_batch(5)
    a.rewrite_batch(None, None, first)
    b.rewrite_batch(None, None, second)
    assert float(first[MIX_LAMBDA][0]) == float(second[MIX_LAMBDA][0])


def test_integer_images_and_a_flip_beside_a_mixing():
    with pytest.raises(TypeError, match="ToDtype"):
        MixUp(num_classes=C).rewrite_batch(
            None, None, {"image": torch.zeros(2, 3, dtype=torch.uint8), "target": torch.arange(2)}
        )

    class Flip(InputRewritingCallback):
        mixes_targets = False

        def rewrite(self, trainer, pl_module, batch, rng):
            return Rewrite(batch["image"].flip(-1))

    trainer, _ = fit([Flip(), MixUp(seed=1), ProgressiveSelfKD(total_epochs=2), LastBatch()], max_steps=2)
    batch = LastBatch.of(trainer)
    assert MIX_PARTNER in batch and batch[CLEAN_IMAGE].shape == batch["image"].shape
    assert not Flip().softens_targets


def test_predict_step_reads_inputs_without_labels():
    task = ImageClassifier(MLP(in_features=64, num_classes=10, width=16), num_classes=10)
    x = torch.randn(3, 1, 8, 8)
    for batch in ({"image": x, "index": torch.arange(3)}, [x], x):
        assert task.predict_step(batch, 0).shape == (3, 10)


def test_local_learning_refuses_loss_mode_mixing():
    from lightning_regs.tasks import LocalLearningClassifier

    task = LocalLearningClassifier(MLP(in_features=64, num_classes=10, width=16, depth=3), 10, K=2, split=[0])
    with pytest.raises(ValueError, match="interpolates_mixed_loss"):
        fit([MixUp(mode="loss")], task=task)


def test_one_hot_data_keeps_each_rows_own_label_for_accuracy():
    y = torch.tensor([0, 1, 2, 3])
    batch = {"image": torch.randn(4, 3), "target": torch.eye(4)[y]}
    MixUp(1.0, num_classes=4, seed=3).rewrite_batch(None, None, batch)
    assert class_ids(batch, soft="argmax").tolist() == y.tolist()


def test_loss_mode_hands_compute_loss_the_partners_class_ids_too():
    seen = []

    class Recording(ImageClassifier):
        def compute_loss(self, logits, batch):
            seen.append(class_ids(batch).clone())
            return super().compute_loss(logits, batch)

    task = Recording(MLP(in_features=64, num_classes=10, width=16), num_classes=10)
    batch = make_batch(6)
    batch["hard_target"] = batch["target"].clone()  # as after a soft-target callback
    MixUp(0.4, mode="loss", num_classes=C, seed=2).rewrite_batch(None, None, batch)
    task.training_step(batch, 0)
    assert torch.equal(seen[0], batch["hard_target"]) and torch.equal(seen[1], batch["hard_target"][batch[MIX_PARTNER]])
