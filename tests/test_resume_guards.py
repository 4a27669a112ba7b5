"""Nothing silent on resume: non-finite predictions, corrupted PS-KD state, and data that changed under a checkpoint."""

from __future__ import annotations

import warnings

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from lightning_regs.callbacks import ProgressiveSelfKD
from lightning_regs.datamodules import CIFAR10DataModule, IndexedDataset
from lightning_regs.functional import PredictionTable
from lightning_regs.models import MLP
from lightning_regs.tasks import ImageClassifier
from tests.helpers.fake_datasets_vision import write_cifar
from tests.helpers.trainers import QUIET


@pytest.mark.parametrize("top_k", [None, 2])
def test_non_finite_rows_are_not_stored(top_k: int | None) -> None:
    table = PredictionTable(4, 3, top_k=top_k)
    table.write(torch.tensor([0, 1]), torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]]))
    before = table.read(torch.tensor([0, 1, 2]))
    bad = torch.tensor([[float("nan"), 0.5, 0.5], [0.3, 0.3, 0.4], [float("inf"), 0.0, 0.0]])
    table.write(torch.tensor([0, 3, 2]), bad)
    after = table.read(torch.tensor([0, 1, 2, 3]))
    assert torch.isfinite(after).all()
    torch.testing.assert_close(after[0], before[0])  # the NaN row kept what it held
    assert after[2].sum() == 0 and not table.seen[2]  # never stored
    assert table.seen[3] and table.skipped_rows == 2


class NaNOnce(ImageClassifier):
    """Returns NaN logits for the first two samples of batch 1 of epoch 0 (the loss itself stays finite)."""

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        if self.current_epoch == 0 and batch_idx == 1:
            logits = out["logits"].clone()
            logits[:2] = float("nan")
            out = {**out, "logits": logits}
        return out


def _digits_like(n: int = 64, permute: bool = False) -> IndexedDataset:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 8, 8, generator=generator), torch.arange(n) % 10
    return IndexedDataset(TensorDataset(x, y[torch.randperm(n, generator=generator)] if permute else y))


def test_one_nan_batch_does_not_poison_pskd() -> None:
    seed_everything(0)
    callback = ProgressiveSelfKD(alpha_T=0.8)
    task = NaNOnce(MLP(in_features=64, num_classes=10, width=16, depth=2), 10, lr=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(max_epochs=3, callbacks=[callback], **QUIET).fit(task, DataLoader(_digits_like(), batch_size=16))
    assert torch.isfinite(callback.table.values).all()
    assert all(torch.isfinite(p).all() for p in task.parameters())
    messages = [str(w.message) for w in caught if "were not finite" in str(w.message)]
    assert len(messages) == 1 and messages[0].startswith("ProgressiveSelfKD: 2 predictions of epoch 0")


def _table_state() -> dict:
    table = PredictionTable(5, 3)
    table.write(torch.arange(5), torch.full((5, 3), 1 / 3))
    return {"alpha_T": 0.8, "total_epochs": 3, "table": table.state_dict(), "fingerprint": None}


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda t: t.__setitem__("values", torch.full((3,), 1 / 3)), r"'values' has shape \(3,\); .* needs \(5, 3\)"),
        (lambda t: t["values"].__setitem__((1, 0), float("nan")), "1 rows that are not probabilities"),
        (lambda t: t.pop("seen"), r"lacks \['seen'\]"),
        (lambda t: t.__setitem__("seen", torch.ones(5)), "'seen' has dtype torch.float32, expected torch.bool"),
        (lambda t: t.__setitem__("num_classes", "3"), "sizes are num_samples=5, num_classes='3'"),
    ],
    ids=["class-vector-table", "nan-row", "missing-key", "wrong-dtype", "wrong-size-type"],
)
def test_a_corrupted_pskd_state_is_a_named_error_at_load(corrupt, message: str) -> None:
    state = _table_state()
    corrupt(state["table"])
    with pytest.raises(ValueError, match=message):
        ProgressiveSelfKD().load_state_dict(state)


def test_pskd_refuses_a_table_made_on_other_data(tmp_path) -> None:
    seed_everything(0)
    task = ImageClassifier(MLP(in_features=64, num_classes=10, width=16, depth=2), 10, lr=0.05)
    trainer = Trainer(
        max_epochs=1,
        default_root_dir=tmp_path,
        callbacks=[ProgressiveSelfKD()],
        **{**QUIET, "enable_checkpointing": True},
    )
    trainer.fit(task, DataLoader(_digits_like(), batch_size=16))
    checkpoint = trainer.checkpoint_callback.best_model_path
    saved = torch.load(checkpoint, weights_only=True)["callbacks"]["ProgressiveSelfKD"]["fingerprint"]
    assert saved["size"] == 64 and "labels" in saved
    resumed = Trainer(max_epochs=2, callbacks=[ProgressiveSelfKD()], **QUIET)
    with pytest.raises(ValueError, match="made on other training data: the labels differ"):
        resumed.fit(task, DataLoader(_digits_like(permute=True), batch_size=16), ckpt_path=checkpoint)
    same = Trainer(max_epochs=2, callbacks=[ProgressiveSelfKD()], **QUIET)
    same.fit(task, DataLoader(_digits_like(), batch_size=16), ckpt_path=checkpoint)  # the same data resumes


def test_a_datamodule_refuses_data_replaced_under_its_checkpoint(tmp_path) -> None:
    write_cifar(tmp_path, train_per_batch=4, seed=0)
    original = CIFAR10DataModule(root=tmp_path, val_fraction=0.25, batch_size=4)
    original.setup("fit")
    state = original.state_dict()
    write_cifar(tmp_path, train_per_batch=4, seed=1)  # same sizes, other images and labels
    replaced = CIFAR10DataModule(root=tmp_path, val_fraction=0.25, batch_size=4)
    replaced.setup("fit")
    with pytest.raises(ValueError, match=r"not the data the checkpoint was made on \(.*the labels differ"):
        replaced.load_state_dict(state)
    write_cifar(tmp_path, train_per_batch=4, seed=0)
    same = CIFAR10DataModule(root=tmp_path, val_fraction=0.25, batch_size=4)
    same.setup("fit")
    same.load_state_dict(state)  # the original data again: accepted


def test_split_indices_that_do_not_fit_the_data_are_a_named_error() -> None:
    from lightning_regs.datamodules import DigitsDataModule

    original = DigitsDataModule()
    original.setup("fit")
    foreign = original.state_dict()
    foreign["train_indices"] = foreign["train_indices"] + 5000  # from a larger data set
    foreign.pop("data_fingerprint")
    with pytest.raises(ValueError, match="split indices do not fit the data"):
        DigitsDataModule().load_state_dict(foreign)


def test_a_checkpoint_without_its_split_arguments_warns_which_are_missing() -> None:
    from lightning_regs.datamodules import DigitsDataModule

    original = DigitsDataModule(val_fraction=0.3)
    original.setup("fit")
    old = {k: v for k, v in original.state_dict().items() if k not in ("val_fraction", "test_fraction")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        DigitsDataModule(val_fraction=0.15).load_state_dict(old)
    messages = [str(w.message) for w in caught if "does not record" in str(w.message)]
    assert (
        len(messages) == 1 and "'val_fraction', 'test_fraction'" in messages[0] and "val_fraction=0.15" in messages[0]
    )
