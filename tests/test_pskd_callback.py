import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_regs.callbacks import ProgressiveSelfKD
from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.models import SmallCNN
from lightning_regs.tasks import ImageClassifier
from tests.helpers.loggers import RecordingLogger
from tests.helpers.pskd import (
    CollatedDigits,
    LossOnlyClassifier,
    RecordingClassifier,
    drop_index,
    one_hot_targets,
    shift_index,
)
from tests.helpers.trainers import QUIET


def trainer_for(tmp_path, max_epochs, callbacks, **kwargs) -> Trainer:
    return Trainer(max_epochs=max_epochs, default_root_dir=tmp_path, callbacks=callbacks, **{**QUIET, **kwargs})


def recording_task() -> RecordingClassifier:
    return RecordingClassifier(SmallCNN(width=8), num_classes=10, lr=0.05)


def test_every_step_sees_the_targets_of_equation_six(tmp_path):
    seed_everything(0)
    task, pskd = recording_task(), ProgressiveSelfKD(alpha_T=0.8)
    trainer_for(tmp_path, 3, [pskd], limit_val_batches=0).fit(task, DigitsDataModule(batch_size=128))
    last_seen: dict[int, torch.Tensor] = {}
    checked = 0
    for step in task.steps:
        alpha = 0.8 * (step["epoch"] + 1) / 3
        for row, index in enumerate(step["index"].tolist()):
            if step["epoch"] == 0:
                assert step["target"].dtype == torch.int64
                assert step["target"][row] == step["labels"][row]
            else:
                expected = (1 - alpha) * F.one_hot(step["labels"][row], 10).float() + alpha * last_seen[index]
                torch.testing.assert_close(step["target"][row], expected, rtol=0, atol=1e-6)
                checked += 1
        for row, index in enumerate(step["index"].tolist()):
            last_seen[index] = step["probabilities"][row]
    assert checked == 2 * len(DigitsDataModule().draw_split(1797)["train"])
    final = torch.stack([last_seen[i] for i in range(len(last_seen))])
    torch.testing.assert_close(pskd.table.read(torch.arange(len(last_seen))), final)


def test_logs_alpha_each_epoch_and_accuracy_against_the_labels(tmp_path):
    logger = RecordingLogger()
    task = ImageClassifier(SmallCNN(width=8), num_classes=10, lr=0.05)
    trainer_for(
        tmp_path, 3, [ProgressiveSelfKD(alpha_T=0.6)], logger=logger, limit_train_batches=3, limit_val_batches=1
    ).fit(task, DigitsDataModule())
    # The effective α: epoch 0 trains on the labels (nothing stored yet), then α_e = α_T·(e + 1)/T.
    assert logger.series("pskd/alpha") == pytest.approx([0.0, 0.4, 0.6])


def test_the_cli_appends_it_with_one_line(monkeypatch):
    from lightning_regs.cli import LightningRegsCLI

    monkeypatch.setattr("sys.argv", ["lightning-regs"])
    cli = LightningRegsCLI(
        args=[
            "--config",
            "examples/quickstart.yaml",
            "--trainer.callbacks+=ProgressiveSelfKD",
            "--trainer.callbacks.alpha_T=0.5",
        ],
        run=False,
    )
    (pskd,) = [c for c in cli.trainer.callbacks if isinstance(c, ProgressiveSelfKD)]
    assert pskd.alpha_T == 0.5


def fit_with_pskd(root, max_epochs=4, callbacks=(), ckpt_path=None, pskd=None):
    seed_everything(0)
    task = ImageClassifier(SmallCNN(width=8), num_classes=10, lr=0.05, scheduler="step", milestones=[3])
    pskd = pskd or ProgressiveSelfKD(alpha_T=0.8, storage="float16", top_k=4)
    checkpoint = ModelCheckpoint(dirpath=root, save_last=True)
    trainer_for(root, max_epochs, [pskd, checkpoint, *callbacks], enable_checkpointing=True).fit(
        task, DigitsDataModule(batch_size=128), ckpt_path=ckpt_path
    )
    return task, pskd


def test_resume_with_another_max_epochs_keeps_the_schedule_and_warns(tmp_path):
    fit_with_pskd(tmp_path, max_epochs=2)
    with pytest.warns(UserWarning, match="keeps T=2"):
        _, pskd = fit_with_pskd(tmp_path, max_epochs=3, ckpt_path=tmp_path / "last.ckpt")
    assert pskd.total_epochs == 2 and pskd.alpha(1) == pytest.approx(0.8)


@pytest.mark.parametrize("storage, top_k", [("float16", None), ("float32", 3)])
def test_compact_storage_targets_are_within_the_stated_error(tmp_path, storage, top_k):
    first_targets = {}
    for mode in ("reference", "compact"):
        seed_everything(0)
        task = recording_task()
        pskd = ProgressiveSelfKD(0.8) if mode == "reference" else ProgressiveSelfKD(0.8, storage=storage, top_k=top_k)
        trainer_for(tmp_path / mode, 2, [pskd], limit_val_batches=0, limit_train_batches=4).fit(
            task, DigitsDataModule(batch_size=64)
        )
        first_targets[mode] = next(s for s in task.steps if s["epoch"] == 1)
    reference, compact = first_targets["reference"], first_targets["compact"]
    assert torch.equal(reference["index"], compact["index"])
    error = (compact["target"] - reference["target"]).abs()
    alpha = 0.8
    if top_k is None:  # half precision rounding of the stored probabilities
        assert error.max() <= alpha * 2**-10
    else:  # L1 error = alpha * 2 * (probability mass outside the top k of the stored prediction)
        stored = (reference["target"] - (1 - alpha) * F.one_hot(reference["labels"], 10)) / alpha
        dropped = 1 - stored.topk(top_k, dim=1).values.sum(1)
        torch.testing.assert_close(error.sum(1), alpha * 2 * dropped, atol=1e-5, rtol=0)
        assert error.max() > 0


@pytest.mark.parametrize(
    "collate, error, match",
    [
        (drop_index, TypeError, r"batch\['index'\]"),
        (shift_index, IndexError, "0 <= index < len"),
        (one_hot_targets, ValueError, "already soft"),
    ],
)
def test_bad_batches_are_named_and_nothing_is_written(tmp_path, collate, error, match):
    pskd = ProgressiveSelfKD()
    with pytest.raises(error, match=match):
        trainer_for(tmp_path, 1, [pskd]).fit(recording_task(), CollatedDigits(collate))
    assert pskd.table is None or not pskd.table.seen.any()


def test_a_training_step_without_logits_is_named_and_nothing_is_written(tmp_path):
    pskd = ProgressiveSelfKD()
    with pytest.raises(TypeError, match=r"Return \{'loss': loss, 'logits': logits\}"):
        trainer_for(tmp_path, 1, [pskd]).fit(LossOnlyClassifier(SmallCNN(width=8), 10), DigitsDataModule())
    assert not pskd.table.seen.any()


def test_training_by_steps_needs_total_epochs(tmp_path):
    with pytest.raises(ValueError, match="total_epochs"):
        trainer_for(tmp_path, -1, [ProgressiveSelfKD()], max_steps=3).fit(recording_task(), DigitsDataModule())
    trainer_for(tmp_path, -1, [pskd := ProgressiveSelfKD(total_epochs=10)], max_steps=3).fit(
        recording_task(), DigitsDataModule()
    )
    assert pskd.total_epochs == 10


def test_bad_arguments():
    with pytest.raises(ValueError, match="alpha_T"):
        ProgressiveSelfKD(alpha_T=1.5)
    with pytest.raises(ValueError, match="storage"):
        ProgressiveSelfKD(storage="int8")


def test_the_official_preset_recomputes_alpha_with_the_new_t_on_resume(tmp_path):
    fit_with_pskd(tmp_path, max_epochs=2, pskd=ProgressiveSelfKD(alpha_T=0.8, preset="official"))
    _, pskd = fit_with_pskd(
        tmp_path, max_epochs=3, ckpt_path=tmp_path / "last.ckpt", pskd=ProgressiveSelfKD(alpha_T=0.8, preset="official")
    )
    assert pskd.total_epochs == 3 and pskd.alpha(1) == pytest.approx(0.8 * 2 / 3)  # official: alpha_T (e + 1) / T


class _GatheringModule:
    """Two ranks' rows as ``all_gather`` returns them: rank 0's batch, then rank 1's (``DistributedSampler`` order)."""

    def __init__(self, other_rank: dict[str, torch.Tensor]) -> None:
        self.other_rank = other_rank

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        other = self.other_rank["index"] if tensor.dtype == torch.long else self.other_rank["probabilities"]
        return torch.stack([tensor, other])


@pytest.mark.parametrize(("preset", "kept_rank"), [("library", 0), ("official", 1)])
def test_a_padded_index_gathered_twice_keeps_the_presets_copy(preset, kept_rank):
    """Of two copies of a sample in one gathered batch, the library keeps rank 0's and the official loop rank 1's."""
    from types import SimpleNamespace

    from lightning_regs.functional import PredictionTable

    logits = {rank: torch.randn(3, 4, generator=torch.Generator().manual_seed(rank)) for rank in (0, 1)}
    index = {0: torch.tensor([4, 0, 2]), 1: torch.tensor([1, 3, 4])}  # 5 samples padded to 6: sample 4 twice
    pskd = ProgressiveSelfKD(alpha_T=0.8, preset=preset)
    pskd.table = PredictionTable(5, 4)
    pskd._pending_index = index[0]
    module = _GatheringModule({"index": index[1], "probabilities": logits[1].softmax(-1)})
    pskd.on_train_batch_end(SimpleNamespace(world_size=2), module, {"logits": logits[0]}, {}, 0)
    expected = logits[kept_rank][0 if kept_rank == 0 else 2].softmax(-1)
    torch.testing.assert_close(pskd.table.read(torch.tensor([4]))[0], expected)
    torch.testing.assert_close(pskd.table.read(torch.tensor([3]))[0], logits[1][1].softmax(-1))


def test_a_bad_preset_is_named():
    with pytest.raises(ValueError, match="preset must be 'library' or 'official'"):
        ProgressiveSelfKD(preset="paper")  # type: ignore[arg-type]
