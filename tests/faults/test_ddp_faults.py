"""Faults under 2-process DDP on CPU (gloo): on one rank only (non-finite inputs, losses, labels, weights, points), and
in the checkpoint a DDP run resumes from (another process count or batch size, changed data, a corrupt PS-KD table).

A fault must give every rank the same outcome: the named error (the run stops and no rank is left waiting), or the
same handled result on every rank, equal to the run without the fault (``docs/design.md``, "Distributed", "State and
resume", "Errors"). Every case whose fault leaves the process group usable runs in one spawn (:func:`_shared_run`:
some fifty fits of a tenth of a second; one fault that stops a rank alone runs last in it); the other faults that stop
a rank alone, or hang, get a spawn of their own.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.multiprocessing.spawn import ProcessRaisedException
from torch.utils.data import DataLoader, TensorDataset

from lightning_regs.batch import IMAGE, TARGET
from lightning_regs.callbacks import ProgressiveSelfKD
from lightning_regs.datamodules import DatasetDataModule, DigitsDataModule, IndexedDataset
from lightning_regs.datamodules.base import DataChangedError, ResumePositionError
from lightning_regs.models import MLP
from lightning_regs.tasks import ImageClassifier
from tests.faults._ddp_helpers import (
    NAN,
    NaNLogitsOnRank,
    NaNWeightsOnRank,
    RestoreWeights,
    all_nan,
    caught,
    ddp_trainer,
    fit,
    keep_rows,
    metrics,
    rank_batches,
    reraise,
    spawn,
    state,
)
from tests.faults._tasks_helpers import TASKS, batches, loader, make_task, poke
from tests.faults.test_callbacks_nonfinite import MONITORS, _nan_rows
from tests.helpers.ddp import DDP_SPAWN_CPU
from tests.helpers.trainers import QUIET

HANDLED = pytest.mark.fault(area="ddp", outcome="handled")
REFUSED = pytest.mark.fault(area="ddp", outcome="refused")
BAD_RANK = 1
SKIP_KINDS = ("image", "grokking", "mil")  # ImageClassifier.training_step: a zero loss, gradients dropped
BATCH_CASES = [("image", 0), ("image", 2), ("aggregate", 0), ("mil", 2)]  # (task, val batch whose rows all are NaN)
WEIGHT_MONITORS = ("lc", "nc", "pgd", "dse", "ip", "llc")
POINT_MONITORS = ("lc", "nc", "pgd")
PSKD_FAULTS = ("sum-3", "nan", "negative")


def _overflow(batch: dict) -> dict:
    """``batch`` with finite inputs so large that the loss overflows."""
    return {**batch, IMAGE: torch.full_like(batch[IMAGE], 3e38)}


# -- the shared spawn's runs: non-finite values in the tasks -----------------------------------------------------------


def _val_metrics(kind: str, train: list, val: list) -> dict[str, float]:
    return metrics(fit(make_task(kind), train, val)[0], "val/")


def _val_row_case(rank: int, kind: str) -> tuple[dict, dict]:
    """Row 1 of val batch 1 NaN on the bad rank; the reference leaves that row out of the data."""
    train, val = rank_batches(kind, "train", rank, n=1), rank_batches(kind, "val", rank)
    poked, clean = list(val), list(val)
    if rank == BAD_RANK:
        poked[1], clean[1] = poke(val[1], NAN), keep_rows(val[1], [0, 2, 3])
    return _val_metrics(kind, train, poked), _val_metrics(kind, train, clean)


def _val_batch_case(rank: int, kind: str, position: int) -> tuple[dict, dict]:
    """Every row of val batch ``position`` NaN on the bad rank; the reference has no such batch."""
    train, val = rank_batches(kind, "train", rank, n=1), rank_batches(kind, "val", rank)
    poked, clean = list(val), list(val)
    if rank == BAD_RANK:
        poked[position] = all_nan(val[position])
        del clean[position]
    return _val_metrics(kind, train, poked), _val_metrics(kind, train, clean)


def _skip_case(rank: int, kind: str, fault: str = "input") -> dict:
    """nonfinite='skip' and a NaN input (or a loss that overflows) in training batch 1 of the bad rank; the reference
    trains on every rank without batch 1."""
    train = rank_batches(kind, "train", rank)
    poked = list(train)
    if rank == BAD_RANK:
        poked[1] = _overflow(train[1]) if fault == "loss" else poke(train[1], NAN)
    reference = make_task(kind, nonfinite="skip")
    fit(reference, [train[0], train[2]])
    task = make_task(kind, nonfinite="skip")
    outcome = caught(lambda: fit(task, poked))  # last: a rank that fails alone uses the group no more
    if isinstance(outcome, Exception):
        return {"error": outcome}
    trainer, messages = outcome
    return {"skipped": metrics(trainer)["train/skipped_nonfinite"], "state": state(task), "reference": state(reference),
            "warnings": [m for m in messages if "skipped training step" in m]}  # fmt: skip


# -- the shared spawn's runs: monitors and PS-KD -----------------------------------------------------------------------


def _monitor_fit(monitor, before: tuple = (), after: tuple = ()) -> tuple[list[int], dict[str, list[float]], list[str]]:
    """One step of an MLP on digits, measured at steps 0 and 1; the steps, the history and the non-finite warnings."""
    seed_everything(0)
    task = ImageClassifier(MLP(in_features=64, num_classes=10, width=16, depth=3), 10, optimizer="adamw", lr=1e-2)
    trainer = ddp_trainer(max_steps=1, limit_val_batches=0, callbacks=[*before, monitor, *after])
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        trainer.fit(task, DigitsDataModule(batch_size=32))
    messages = [str(w.message) for w in caught_warnings if "non-finite" in str(w.message)]
    return monitor.measured_steps, dict(monitor.history), messages


def _points_case(rank: int, name: str, nan_rank: int | None) -> tuple:
    """The monitor measures the points ``set_points`` gave it on ``nan_rank`` (a third of them NaN); other ranks
    draw their own."""
    monitor = MONITORS[name]()
    if name != "pgd":
        monitor.sets = ("train",)
    if rank == nan_rank:
        generator = torch.Generator().manual_seed(0)
        images, labels = torch.randn(24, 1, 8, 8, generator=generator), torch.arange(24) % 10
        if name == "pgd":
            monitor.set_points(heldout=(_nan_rows(images), labels))
        else:
            monitor.set_points(train=_nan_rows(images) if name == "lc" else (_nan_rows(images), labels))
    return _monitor_fit(monitor)


def _pskd_case(rank: int) -> dict:
    seed_everything(0)
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    data = DataLoader(IndexedDataset(TensorDataset(x, torch.arange(32) % 10)), batch_size=8)  # 2 batches per rank
    task = NaNLogitsOnRank(MLP(in_features=64, num_classes=10, width=16, depth=2), 10, lr=0.05, rank=BAD_RANK)
    callback = ProgressiveSelfKD(alpha_T=0.8)
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        ddp_trainer(callbacks=[callback]).fit(task, data)
    table = callback.table
    return {"values": table.values.clone(), "seen": table.seen.clone(), "skipped": int(table.skipped_rows),
            "nan_index": task.nan_index, "warnings": [str(w.message) for w in caught_warnings]}  # fmt: skip


# -- the shared spawn's runs: checkpoints ------------------------------------------------------------------------------


def _resume_fit(world: int, ckpt: str | None = None, batch_size: int = 8, changed: bool = False, max_steps: int = 9,
                save_dir: str | None = None) -> tuple[dict, torch.Tensor]:  # fmt: skip
    """Up to ``max_steps`` steps with PS-KD over 96 samples (6 steps an epoch: batches of 8 on each of 2 ranks, or of
    16 on one), a checkpoint every 3 steps in ``save_dir``; the weights and the PS-KD table at the end."""
    seed_everything(0)
    x, y = torch.randn(96, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(96) % 10
    if changed:
        x[5, 0, 0, 0] += 1  # one pixel of one training sample
    data = DatasetDataModule(TensorDataset(x, y), TensorDataset(x[:16], y[:16]), batch_size=batch_size)
    task = ImageClassifier(MLP(in_features=64, num_classes=10, width=16, depth=2), 10, lr=0.05, scheduler="constant")
    pskd = ProgressiveSelfKD(alpha_T=0.8)
    callbacks: list = [pskd]
    if save_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=save_dir, every_n_train_steps=3, save_top_k=-1, filename="{step}"))
    settings = {"max_epochs": 2, "max_steps": max_steps, "limit_val_batches": 0, "callbacks": callbacks,
                "enable_checkpointing": save_dir is not None}  # fmt: skip
    trainer = ddp_trainer(**settings) if world > 1 else Trainer(**{**QUIET, **settings})
    trainer.fit(task, data, ckpt_path=ckpt)
    return state(task), pskd.table.values.clone()


def _corrupt_pskd(source: str, target: str, fault: str) -> int:
    """Write ``source`` with one written row of its PS-KD table made ``fault``; that row's index."""
    checkpoint = torch.load(source, weights_only=False)
    table = checkpoint["callbacks"]["ProgressiveSelfKD"]["table"]
    row = int(table["seen"].nonzero()[0, 0])
    if fault == "sum-3":
        table["values"][row] = 0.3
    elif fault == "nan":
        table["values"][row, 0] = NAN
    else:
        table["values"][row] = 0.0
        table["values"][row, :2] = torch.tensor([-0.5, 1.5])  # sums to 1
    torch.save(checkpoint, target)
    return row


def _resume_cases(rank: int, world: int, folder: str, single_process_checkpoint: str) -> dict:
    out: dict = {"full": _resume_fit(world, save_dir=folder)}  # checkpoints at steps 3 (inside epoch 0), 6 (its end), 9
    mid_epoch = f"{folder}/step=3.ckpt"
    out["resumed"] = _resume_fit(world, ckpt=mid_epoch)
    out["other-batch-size"] = caught(lambda: _resume_fit(world, ckpt=mid_epoch, batch_size=4))
    out["changed-data"] = caught(lambda: _resume_fit(world, ckpt=mid_epoch, changed=True))
    out["one-process-checkpoint"] = caught(lambda: _resume_fit(world, ckpt=single_process_checkpoint))
    for fault in PSKD_FAULTS:
        corrupt = f"{folder}/pskd-{fault}.ckpt"
        row = _corrupt_pskd(mid_epoch, corrupt, fault) if rank == 0 else None
        dist.barrier()
        out["pskd", fault] = (row, caught(lambda corrupt=corrupt: _resume_fit(world, ckpt=corrupt)))
    return out


# -- the shared spawn: every case whose fault leaves the process group usable ------------------------------------------


def _shared_run(rank: int, world: int, folder: str, single_process_checkpoint: str) -> dict:
    out: dict = {}
    for kind in TASKS:
        out["val-row", kind] = _val_row_case(rank, kind)
    for kind, position in BATCH_CASES:
        out["val-batch", kind, position] = _val_batch_case(rank, kind, position)
    for kind in (*SKIP_KINDS, "local"):
        out["skip", kind] = _skip_case(rank, kind)  # every rank raises at the same point, or none does
    out["skip", "aggregate"] = _skip_case(rank, "aggregate", "loss")  # the loss's skip is all-reduced
    for name in WEIGHT_MONITORS:
        spoiler = NaNWeightsOnRank(BAD_RANK)
        out["weights", name] = _monitor_fit(MONITORS[name](), (spoiler,), (RestoreWeights(spoiler),))
        out["weights-reference", name] = _monitor_fit(MONITORS[name]())
    for name in POINT_MONITORS:
        out["points", name] = _points_case(rank, name, nan_rank=0)
    out["points-on-rank-1"] = _points_case(rank, "lc", nan_rank=1)
    out["points-reference"] = _points_case(rank, "lc", nan_rank=None)
    out["pskd"] = _pskd_case(rank)
    out.update(_resume_cases(rank, world, folder, single_process_checkpoint))
    # every rank stops with Lightning's error in its second step
    train = rank_batches("local", "train", rank)
    out["local-without-find-unused"] = caught(lambda: fit(make_task("local"), train, find_unused=False))
    # last of all: before the fix rank 1 skipped alone and left rank 0 in the loss's all-reduce
    out["skip-input", "aggregate"] = _skip_case(rank, "aggregate")
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp_checkpoints")
    _resume_fit(1, batch_size=16, max_steps=3, save_dir=str(folder / "single"))  # 3 of its 6 batches of 16
    return folder


@pytest.fixture(scope="module")
def ranks(folder) -> list[dict]:
    return spawn(_shared_run, str(folder), str(folder / "single" / "step=3.ckpt"))


def _same_on_every_rank(results: list) -> dict:
    first = results[0]
    for other in results[1:]:
        assert other.keys() == first.keys()
        for name, value in first.items():
            torch.testing.assert_close(other[name], value, equal_nan=True, msg=name)
    return first


def _weights_equal(result: dict) -> None:
    for name, value in result["reference"].items():
        torch.testing.assert_close(result["state"][name], value, rtol=0, atol=0, msg=name)


# -- cases: the tasks --------------------------------------------------------------------------------------------------


@HANDLED
@pytest.mark.parametrize("kind", TASKS)
def test_a_non_finite_validation_row_on_one_rank_is_left_out_and_counted_on_every_rank(ranks, kind: str) -> None:
    logged = _same_on_every_rank([rank["val-row", kind][0] for rank in ranks])
    reference = _same_on_every_rank([rank["val-row", kind][1] for rank in ranks])
    assert logged.pop("val/nonfinite_inputs") == 1.0  # summed over the ranks: rank 0 saw none
    assert reference.pop("val/nonfinite_inputs") == 0.0
    assert logged and all(math.isfinite(v) for v in logged.values()), logged
    assert logged == reference  # the metrics over the same rows without the bad one, bit for bit


@HANDLED
@pytest.mark.parametrize(("kind", "position"), BATCH_CASES, ids=[f"{k}-batch{p}" for k, p in BATCH_CASES])
def test_a_validation_batch_of_only_non_finite_rows_on_one_rank_counts_in_no_metric(ranks, kind, position) -> None:
    logged = _same_on_every_rank([rank["val-batch", kind, position][0] for rank in ranks])
    reference = _same_on_every_rank([rank["val-batch", kind, position][1] for rank in ranks])
    assert logged.pop("val/nonfinite_inputs") == 4.0
    assert reference.pop("val/nonfinite_inputs") == 0.0
    assert logged and all(math.isfinite(v) for v in logged.values()), logged
    assert logged == reference


@HANDLED
def test_local_learning_skip_mode_skips_a_step_with_a_nan_on_one_rank_on_every_rank(ranks) -> None:
    results = [rank["skip", "local"] for rank in ranks]
    assert [r.get("error") for r in results] == [None, None]
    assert [r["skipped"] for r in results] == [1.0, 1.0]  # one step, skipped together
    for result in results:
        _weights_equal(result)  # this rank's weights and BatchNorm statistics, as without batch 1 on any rank
    for name, value in results[0]["state"].items():
        if "running_" not in name and "num_batches" not in name:  # BatchNorm's statistics are per rank under DDP
            torch.testing.assert_close(results[1]["state"][name], value, rtol=0, atol=0, msg=name)


@HANDLED
def test_the_skip_warning_names_what_was_not_finite_when_another_rank_saw_it(ranks) -> None:
    (message,) = ranks[0]["skip", "local"]["warnings"]  # only rank 0 warns; rank 1 had the NaN
    reason = message.split("skipped training step 1 (batch 1): ", 1)[1]
    assert any(word in reason.split(". ")[0] for word in ("NaN", "inf", "rank")), message  # what, or where it was


@HANDLED
@pytest.mark.parametrize("kind", [*SKIP_KINDS, "aggregate"])
def test_skip_mode_skips_a_step_with_a_non_finite_input_or_loss_on_one_rank_on_every_rank(ranks, kind) -> None:
    results = [rank["skip", kind] for rank in ranks]
    reraise(results[BAD_RANK].get("error"))
    assert [r["skipped"] for r in results] == [1.0, 1.0]
    for result in results:
        _weights_equal(result)


@HANDLED
def test_aggregate_skip_mode_skips_a_step_with_a_nan_input_on_one_rank_on_every_rank(ranks) -> None:
    results = [rank["skip-input", "aggregate"] for rank in ranks]
    reraise(results[BAD_RANK].get("error"))
    assert [r["skipped"] for r in results] == [1.0, 1.0]
    for result in results:
        _weights_equal(result)


# -- cases: monitors and PS-KD -----------------------------------------------------------------------------------------


@HANDLED
@pytest.mark.parametrize("name", WEIGHT_MONITORS)
def test_a_monitor_logs_nan_on_every_rank_when_one_replica_has_nan_weights(ranks, name: str) -> None:
    reference = ranks[0]["weights-reference", name][1]
    for rank in ranks:
        steps, history, _ = rank["weights", name]
        assert steps == [0, 1] and history.keys() == reference.keys()
        for metric, values in history.items():
            assert math.isnan(values[0]), (metric, values)  # step 0: measured as NaN, never a count
            torch.testing.assert_close(values[1], reference[metric][1], equal_nan=True, msg=metric)  # then as before
    (warning,) = ranks[0]["weights", name][2]
    assert "non-finite (NaN or inf) weights at step 0" in warning


@HANDLED
@pytest.mark.parametrize("name", POINT_MONITORS)
def test_nan_points_on_rank_zero_are_measured_as_nan_on_every_rank(ranks, name: str) -> None:
    for rank in ranks:
        steps, history, _ = rank["points", name]
        assert steps == [0, 1]
        assert history and all(math.isnan(v) for values in history.values() for v in values), history
    said = [message.split(": ", 1)[1].split(":")[0] for message in ranks[0]["points", name][2]]
    assert said == ["non-finite (NaN or inf) points at step 0", "non-finite (NaN or inf) points at step 1"]


@HANDLED
def test_nan_points_set_on_another_rank_than_zero_are_replaced_by_rank_zeros_points(ranks) -> None:
    reference = ranks[0]["points-reference"][1]
    assert reference and all(math.isfinite(v) for values in reference.values() for v in values)
    for rank in ranks:
        steps, history, messages = rank["points-on-rank-1"]
        assert steps == [0, 1] and not messages
        assert history == reference  # every rank measures rank 0's points


@HANDLED
def test_nan_logits_on_one_rank_are_stored_in_no_pskd_table(ranks) -> None:
    results = [rank["pskd"] for rank in ranks]
    nan_index = results[BAD_RANK]["nan_index"]
    assert len(nan_index) == 2
    for result in results:
        assert torch.isfinite(result["values"]).all()
        assert (~result["seen"]).nonzero().flatten().tolist() == sorted(nan_index)  # never stored, on every rank
        assert result["skipped"] == 2
    assert torch.equal(results[0]["values"], results[1]["values"])
    assert any("2 predictions of epoch 0 were not finite" in m for m in results[0]["warnings"])


# -- cases: local learning's strategy ----------------------------------------------------------------------------------


@REFUSED
def test_local_learning_without_find_unused_parameters_is_a_named_error_on_every_rank(ranks) -> None:
    for rank in ranks:
        with pytest.raises(RuntimeError, match=r"parameters that were not used in producing the loss.*"
                           r"DDPStrategy\(find_unused_parameters=True\)"):  # fmt: skip
            reraise(rank["local-without-find-unused"])


# -- cases: checkpoints ------------------------------------------------------------------------------------------------


@HANDLED
def test_a_mid_epoch_ddp_checkpoint_resumed_on_as_many_processes_continues_exactly(ranks) -> None:
    for rank in ranks:
        (weights, table), (expected_weights, expected_table) = rank["resumed"], rank["full"]
        for name, value in expected_weights.items():
            torch.testing.assert_close(weights[name], value, rtol=0, atol=0, msg=name)
        assert torch.equal(table, expected_table)  # the PS-KD table too


@REFUSED
def test_a_mid_epoch_ddp_checkpoint_resumed_with_another_batch_size_is_refused_on_every_rank(ranks) -> None:
    words = r"inside epoch 0, after 3 of its 6 batches of 8 samples, and this module has batch_size=4.*Resume with "
    for rank in ranks:
        with pytest.raises(ResumePositionError, match=words + r"batch_size=8"):
            reraise(rank["other-batch-size"])


@REFUSED
def test_a_one_process_mid_epoch_checkpoint_resumed_on_two_is_refused_on_every_rank(ranks) -> None:
    for rank in ranks:
        with pytest.raises(ResumePositionError, match=r"after 3 of its 6 batches of 16 samples on 1 process\(es\), and "
                           r"this run has 2.*Resume on as many processes"):  # fmt: skip
            reraise(rank["one-process-checkpoint"])


@REFUSED
def test_a_two_process_mid_epoch_checkpoint_resumed_on_one_is_refused(ranks, folder) -> None:
    words = r"after 3 of its 6 batches of 8 samples on 2 process\(es\), and this run has 1.*Resume on as many processes"
    with pytest.raises(ResumePositionError, match=words + r", or from a checkpoint written at an epoch's end"):
        _resume_fit(1, ckpt=str(folder / "step=3.ckpt"))


@HANDLED
def test_a_two_process_checkpoint_at_an_epochs_end_resumes_on_one_process_with_the_global_batch(ranks, folder) -> None:
    weights, table = _resume_fit(1, ckpt=str(folder / "step=6.ckpt"), batch_size=16)  # steps 7 to 9: epoch 1
    expected_weights, expected_table = ranks[0]["full"]
    for name, value in expected_weights.items():
        torch.testing.assert_close(weights[name], value, msg=name)  # one batch of 16 = two of 8, up to rounding
    assert torch.equal(table, expected_table)


@REFUSED
def test_data_changed_under_a_ddp_checkpoint_is_refused_on_every_rank(ranks) -> None:
    words = r"not the data the checkpoint was made on \(the train split changed: the content differs.*Resume with "
    for rank in ranks:
        with pytest.raises(DataChangedError, match=words + r"the original data, or start a new run"):
            reraise(rank["changed-data"])


@REFUSED
@pytest.mark.parametrize("fault", PSKD_FAULTS)
def test_a_pskd_table_row_that_is_not_a_distribution_is_refused_on_every_rank_on_resume(ranks, fault: str) -> None:
    row = ranks[0]["pskd", fault][0]
    shown = {"sum-3": r"\[0\.3, 0\.3, 0\.3, 0\.3, 0\.3, 0\.3\] \.\.\. \(sum 3, written\)", "nan": r"\[nan, ",
             "negative": r"\[-0\.5, 1\.5, 0\.0"}[fault]  # fmt: skip
    for rank in ranks:
        with pytest.raises(ValueError, match=rf"table holds 1 rows that are not probabilities.*the first is row {row}, "
                           rf"{shown}.*resume from a checkpoint of this run, or start a new run"):  # fmt: skip
            reraise(rank["pskd", fault][1])


# -- faults that stop one rank, or the group: a spawn each -------------------------------------------------------------


def _nan_input_on_one_rank(rank: int, world: int) -> None:
    train = rank_batches("image", "train", rank)
    if rank == BAD_RANK:
        train[2] = poke(train[2], NAN)
    fit(make_task("image"), train)


@REFUSED
def test_a_nan_input_on_one_rank_is_the_named_error_and_no_rank_is_left_waiting() -> None:
    words = r"ImageClassifier: training step 2 \(batch 2\) has non-finite values in batch\['image'\] \(1 NaN\)"
    with pytest.raises(ValueError, match=words + r".*check the data.*nonfinite='skip'"):
        spawn(_nan_input_on_one_rank)  # rank 1's own error; rank 0, left in the gradient all-reduce, is ended


@REFUSED
def test_a_bad_label_on_one_rank_under_ddp_spawn_reaches_the_caller_by_name() -> None:
    val = batches("image", "val", n=6)  # DistributedSampler: rank 1 validates on batches 1, 3, 5 (its batches 0, 1, 2)
    val[5] = {**val[5], TARGET: torch.tensor([0, -100, 2, 3])}
    words = r"ValueError: ImageClassifier: val batch 2 holds the label -100 \(row 1.*must lie in \[0, 9\]"
    with pytest.raises(ProcessRaisedException, match=r"Process 1 terminated(.|\n)*" + words + r".*ignore_index=-100"):
        Trainer(**{**QUIET, **DDP_SPAWN_CPU, "max_epochs": 1}).fit(
            make_task("image"), loader(batches("image", n=2)), loader(val)
        )


def _mil_first_val_batch(rank: int, world: int) -> tuple[dict, dict]:
    return _val_batch_case(rank, "mil", 0)


@HANDLED
def test_a_first_validation_batch_of_only_non_finite_bags_on_one_rank_does_not_hang_mil() -> None:
    results = spawn(_mil_first_val_batch, timeout_s=5)
    logged = _same_on_every_rank([r[0] for r in results])
    reference = _same_on_every_rank([r[1] for r in results])
    assert logged.pop("val/nonfinite_inputs") == 4.0 and reference.pop("val/nonfinite_inputs") == 0.0
    assert logged == reference
