"""The generic tests every registered method passes (see ``tests/harness/registry.py``).

For each setting: a real ``Trainer.fit``; stopped and resumed ends where uninterrupted ends (weights and
callback state); two ``ddp_spawn`` processes equal one process on the same global batches; every
checkpoint loads with ``torch.load(weights_only=True)``; everything handed to ``ddp_spawn`` pickles.
"""

from __future__ import annotations

import inspect
import pickle
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

import lightning_regs.callbacks
import lightning_regs.local_learning
import lightning_regs.tasks
from tests.harness.compare import assert_same_state, assert_trained
from tests.harness.registry import EVALUATION_ONLY, REGISTRY, MethodSetting
from tests.harness.runs import (
    DDP_BATCH,
    fit_setting,
    initial_state,
    run_ddp,
    run_resumed,
    run_resumed_mid_epoch,
    run_uninterrupted,
)
from tests.helpers.ddp import DDP_SPAWN, DDP_SPAWN_FIND_UNUSED

ENTRIES = [pytest.param(entry, id=entry.name) for entry in REGISTRY]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Each entry's stopped-and-resumed run (state and checkpoint folder), computed once."""
    cache: dict[str, tuple[dict, Path]] = {}

    def get(entry: MethodSetting) -> tuple[dict, Path]:
        if entry.name not in cache:
            root = tmp_path_factory.mktemp(f"{entry.name}-resumed")
            cache[entry.name] = (run_resumed(entry, root), root)
        return cache[entry.name]

    return get


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Each entry's uninterrupted run, computed once and shared by the tests that compare with it."""
    cache: dict[str, dict] = {}

    def get(entry: MethodSetting) -> dict:
        if entry.name not in cache:
            cache[entry.name] = run_uninterrupted(entry, tmp_path_factory.mktemp(f"{entry.name}-full"))
        return cache[entry.name]

    return get


@pytest.mark.parametrize("entry", ENTRIES)
def test_fit_trains_and_the_method_leaves_state(entry, uninterrupted):
    state = uninterrupted(entry)
    assert_trained(initial_state(entry), state["weights"])
    for callback in entry.make_callbacks():
        fresh = callback.state_dict()
        if fresh:  # a stateful callback: fit must have filled or moved its state
            with pytest.raises(AssertionError):
                assert_same_state(fresh, state["callbacks"][callback.state_key], atol=0.0)


@pytest.mark.parametrize("entry", ENTRIES)
def test_stopped_and_resumed_ends_where_uninterrupted_ends(entry, uninterrupted, resumed):
    if entry.no_resume_because:
        pytest.skip(entry.no_resume_because)
    assert_same_state(uninterrupted(entry), resumed(entry)[0], atol=1e-6)


# (checkpoint every N optimizer steps, crash before step k + 1), with 4 batches an epoch (epoch 1 is steps 5-8): the
# last checkpoint is step 5 (1 batch into epoch 1) for (1, 5), and step 6 (2 batches into epoch 1) for (3, 7).
MID_EPOCH_STOPS = [pytest.param(1, 5, id="every-step-ckpt-stop-at-5"), pytest.param(3, 7, id="every-3-steps-stop-at-7")]


@pytest.mark.parametrize(("every_n_train_steps", "crash_at_step"), MID_EPOCH_STOPS)
@pytest.mark.parametrize("entry", ENTRIES)
def test_stopped_mid_epoch_and_resumed_ends_where_uninterrupted_ends(
    entry, uninterrupted, tmp_path, every_n_train_steps, crash_at_step
):
    if entry.no_resume_because:
        pytest.skip(entry.no_resume_because)
    resumed = run_resumed_mid_epoch(entry, tmp_path, every_n_train_steps, crash_at_step, accelerator="cpu", devices=1)
    assert_same_state(uninterrupted(entry), resumed, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pskd", "local_learning_man"])
def test_two_processes_stopped_mid_epoch_and_resumed_end_where_uninterrupted_ends(name, tmp_path):
    entry = next(entry for entry in REGISTRY if entry.name == name)
    strategy = DDP_SPAWN_FIND_UNUSED if name.startswith("local_learning") else DDP_SPAWN
    ddp = {"per_rank_batch": DDP_BATCH, "accelerator": "cpu", "devices": 2, "strategy": strategy}  # fresh per fit
    fit_setting(entry, tmp_path / "full", **ddp)
    uninterrupted = [torch.load(tmp_path / "full" / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    run_resumed_mid_epoch(entry, tmp_path / "resumed", 3, 7, **ddp)
    for rank in (0, 1):
        resumed = torch.load(tmp_path / "resumed" / f"rank{rank}.pt", weights_only=True)
        assert_same_state(uninterrupted[rank], resumed, atol=1e-6)


@pytest.mark.parametrize("entry", ENTRIES)
def test_every_checkpoint_loads_with_weights_only(entry, resumed):
    if entry.no_resume_because:
        pytest.skip(entry.no_resume_because)
    checkpoints = sorted(resumed(entry)[1].glob("*.ckpt"))
    assert len(checkpoints) >= entry.max_epochs
    for path in checkpoints:
        checkpoint = torch.load(path, weights_only=True)
        assert {"state_dict", "callbacks", "loops"} <= set(checkpoint), path.name


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRIES)
def test_two_ddp_processes_equal_one_on_the_same_global_batches(entry, uninterrupted, tmp_path):
    """Or, for an entry whose losses are per-rank by design (``ddp_differs_because``): trains, ranks identical."""
    rank0, rank1 = run_ddp(entry, tmp_path)
    assert_same_state(rank0, rank1, atol=0.0, path="rank1 vs rank0")
    if entry.ddp_differs_because:
        assert_trained(initial_state(entry), rank0["weights"], "ddp")
        return
    assert_same_state(uninterrupted(entry), rank0, atol=entry.atol, path="ddp vs one process")


@pytest.mark.parametrize("entry", ENTRIES)
def test_everything_handed_to_ddp_spawn_pickles(entry, tmp_path):
    for thing in (entry.make_task(), *entry.make_callbacks(), entry.datamodule(tmp_path, 4), entry.strategy()):
        pickle.loads(pickle.dumps(thing))


def _public_classes(module) -> set[type]:
    bases = (pl.Callback, pl.LightningModule)
    return {
        value for name in module.__all__ if inspect.isclass(value := getattr(module, name)) and issubclass(value, bases)
    }


def test_every_public_callback_mixin_and_task_is_in_the_registry():
    public = set().union(*(_public_classes(m) for m in (lightning_regs.callbacks, lightning_regs.local_learning,
                                                         lightning_regs.tasks)))  # fmt: skip
    covered = {cls for entry in REGISTRY for cls in entry.covers}
    missing = {cls for cls in public - covered if cls.__name__ not in EVALUATION_ONLY}
    assert missing == set(), "add a setting to tests/harness/registry.py for each of these"


def test_the_readme_methods_table_names_the_harness_entries_that_prove_each_row():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    named = set(re.findall(r"`harness:([\w+]+)`", readme))
    assert named == {entry.name for entry in REGISTRY}
