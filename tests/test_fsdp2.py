"""FSDP2 (ModelParallelStrategy + fully_shard) on CPU in 2 gloo processes equals one process, for every method.

All 2-process runs share one pair of spawned processes (module fixture ``fsdp2``: starting a pair costs most of
the time on 2 cores); each joins the process group and builds its own Trainer with ``ModelParallelStrategy``, as
``torchrun`` would (``LOCAL_RANK`` set, so Lightning launches nothing). The single-process references run here,
on the same global batches (``SequentialDigits``: rank r takes samples r, r+2, ...). Nothing that trains has
BatchNorm (per-rank batch statistics would differ from the global batch's).

    pytest tests/test_fsdp2.py -q -s      # -s also prints the measured differences
"""

from __future__ import annotations

import functools
import os
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from lightning_regs.callbacks import AdversarialRobustnessMonitor, LocalComplexityMonitor
from lightning_regs.callbacks.pskd import ProgressiveSelfKD
from lightning_regs.callbacks.scheduled_monitor import ScheduledMonitor
from lightning_regs.functional.classification import classification_loss
from lightning_regs.local_learning.saved_bytes import SavedTensorMeter
from lightning_regs.models import MLP
from lightning_regs.tasks import ImageClassifier, LocalLearningClassifier
from lightning_regs.tasks.sharding import fully_shard_task, sharding_units
from tests.helpers.ddp import run_in_ddp
from tests.helpers.trainers import QUIET, SequentialDigits

PER_RANK = 8  # batch per rank under FSDP2, on two ranks
GLOBAL = 2 * PER_RANK  # the same global batch on one process


def full_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict with every DTensor gathered (a collective: all ranks call it)."""
    state = {}
    for key, value in module.state_dict().items():
        value = value.full_tensor() if isinstance(value, DTensor) else value
        state[key] = value.detach().cpu().clone()
    return state


def mlp() -> MLP:
    return MLP(in_features=64, num_classes=10, width=32, depth=4)


def classifier() -> ImageClassifier:
    return ImageClassifier(mlp(), 10, lr=0.1, scheduler="constant")


def fsdp2_strategy() -> ModelParallelStrategy:
    """FSDP2 on two processes; checkpoints hold a full state dict (a fresh strategy for each Trainer)."""
    return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=False)


def fit(task, root: Path, batch: int, callbacks: list[Callback], ckpt_path: Path | None = None, **kwargs: Any):
    if callable(kwargs.get("strategy")):  # a fresh strategy for each Trainer
        kwargs["strategy"] = kwargs["strategy"]()
    trainer = Trainer(
        use_distributed_sampler=False,
        default_root_dir=root,
        callbacks=callbacks,
        **{**QUIET, "limit_val_batches": 0, **kwargs},
    )
    trainer.fit(task, SequentialDigits(batch_size=batch), ckpt_path=ckpt_path)
    return trainer


# -- scenarios: run on one process (batch GLOBAL) and under FSDP2 (batch PER_RANK per rank) -------------------------


def plain_classifier(root: Path, batch: int, **trainer_kwargs: Any) -> dict[str, Any]:
    seed_everything(0)
    task = classifier()
    trainer = fit(task, root, batch, [], max_epochs=1, limit_train_batches=5, **trainer_kwargs)
    sharded = isinstance(task.backbone.head.weight, DTensor)
    return {"state": full_state(task), "sharded": sharded, "steps": trainer.global_step}


def local_learning(root: Path, batch: int, **trainer_kwargs: Any) -> dict[str, Any]:
    seed_everything(0)
    # Clipped to a norm far below the gradients' (the norm must be that of the whole gradient, not of a shard).
    task = LocalLearningClassifier(
        mlp(), 10, K=3, split=[0, 1], head="dgl", man=True, man_momentum=0.5, input_shape=(1, 8, 8), head_norm=False,
        lr=0.1, scheduler="constant", gradient_clip_val=0.05,
    )  # fmt: skip
    callbacks: list = []
    # Validation after the local steps runs the whole model through the root: FSDP2 must accept that order.
    fit(task, root, batch, callbacks, max_epochs=1, limit_train_batches=5, limit_val_batches=1, **trainer_kwargs)
    return {"state": full_state(task)}


def pskd_with_resume(root: Path, batch: int, **trainer_kwargs: Any) -> dict[str, Any]:
    """PS-KD for 2 epochs with a checkpoint per epoch, then a fresh run resumed from the first epoch's checkpoint."""

    def run(ckpt_path: Path | None) -> tuple[ImageClassifier, ProgressiveSelfKD]:
        seed_everything(0)
        task, pskd = classifier(), ProgressiveSelfKD(alpha_T=0.8)
        checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, filename="{epoch}")
        fit(
            task, root, batch, [pskd, checkpoint], ckpt_path=ckpt_path, max_epochs=2, limit_train_batches=4,
            enable_checkpointing=True, **trainer_kwargs,
        )  # fmt: skip
        return task, pskd

    task, pskd = run(None)
    uninterrupted = {"state": full_state(task), "table": pskd.state_dict()["table"]}
    task, pskd = run(root / "ckpt" / "epoch=0.ckpt")
    resumed = {"state": full_state(task), "table": pskd.state_dict()["table"]}
    return {"uninterrupted": uninterrupted, "resumed": resumed, "checkpoint": str(root / "ckpt" / "epoch=0.ckpt")}


def monitors(root: Path, batch: int, **trainer_kwargs: Any) -> dict[str, Any]:
    seed_everything(0)
    shared = {"every_n_steps": 2, "max_overhead": None, "plot": False}
    # 7 points (4 on rank 0, 3 on rank 1) in chunks of 3: without padding rank 0 runs 2 forwards per set, rank 1 one.
    lc = LocalComplexityMonitor(radius=0.5, num_directions=4, num_points=7, batch_size=3, **shared)
    # 1 point: rank 1's shard is empty.
    lc_one = LocalComplexityMonitor(
        radius=0.5, num_directions=4, num_points=1, sets=["heldout"], prefix="lc1", **shared
    )
    robust = AdversarialRobustnessMonitor(epsilon=0.3, steps=3, num_points=7, batch_size=3, **shared)
    fit(classifier(), root, batch, [lc, lc_one, robust], max_epochs=1, limit_train_batches=4, **trainer_kwargs)
    return {"history": {**lc.history, **lc_one.history, **robust.history}, "steps": lc.measured_steps}


def saved_bytes(rank: int | None) -> dict[str, int]:
    """Peak saved-activation bytes of one local step and of one end-to-end step, on one rank's batch."""
    seed_everything(0)
    # Wide enough for local learning to save memory (on the small MLP the DGL heads' activations dominate).
    backbone = MLP(in_features=64, num_classes=10, width=512, depth=7)
    task = LocalLearningClassifier(backbone, 10, split=[1, 2], head="dgl", input_shape=(1, 8, 8), head_norm=False)
    if rank is not None:
        fully_shard_task(task, init_device_mesh("cpu", (2,)))
    generator = torch.Generator().manual_seed(0 if rank is None else rank)
    x, y = torch.randn(PER_RANK, 1, 8, 8, generator=generator), torch.randint(0, 10, (PER_RANK,), generator=generator)
    local, end_to_end = SavedTensorMeter(exclude=[task]), SavedTensorMeter(exclude=[task])  # DTensor shards too
    with end_to_end:
        classification_loss(task(x), y).backward()
    with local:
        task.local_backward(x, y, backward=torch.Tensor.backward)
    return {"local": local.peak_bytes, "end_to_end": end_to_end.peak_bytes}


# Monitors last: ranks that ran different forwards would leave the collectives of what follows out of step.
SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "classifier": plain_classifier,
    "local_learning": local_learning,
    "pskd": pskd_with_resume,
    "monitors": monitors,
}


def run_fsdp2(rank: int, world_size: int, root: str) -> dict[str, Any]:
    """Every scenario in this process of the pair (module level: spawned processes import it by name)."""
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(world_size))  # as torchrun sets them
    # A collective one rank never joins fails after a minute, with gloo's message, instead of hanging the test.
    dist.set_timeout(timedelta(seconds=60))
    runs = {"saved_bytes": functools.partial(saved_bytes, rank)}
    for name, scenario in SCENARIOS.items():
        trainer_kwargs = {"accelerator": "cpu", "devices": 2, "strategy": fsdp2_strategy}
        runs[name] = functools.partial(scenario, Path(root) / name, PER_RANK, **trainer_kwargs)
    results: dict[str, Any] = {}
    for name, run in runs.items():
        try:
            results[name] = run()
        except Exception:  # reported by the test that reads this scenario; the others still run
            results[name] = traceback.format_exc()
    return results


@pytest.fixture(scope="module")
def fsdp2(tmp_path_factory) -> list[dict[str, Any]]:
    """Each rank's results of every scenario under FSDP2."""
    return run_in_ddp(run_fsdp2, str(tmp_path_factory.mktemp("fsdp2")))


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("single")
    results = {
        name: scenario(root / name, GLOBAL, accelerator="cpu", devices=1) for name, scenario in SCENARIOS.items()
    }
    return {**results, "saved_bytes": saved_bytes(None)}


def result(fsdp2: list[dict[str, Any]], name: str, rank: int = 0) -> dict[str, Any]:
    value = fsdp2[rank][name]
    if isinstance(value, str):
        pytest.fail(f"The FSDP2 run of {name!r} failed on rank {rank}:\n{value}")
    return value


def max_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    """The largest absolute difference over the tensors of two dicts with the same keys (other values equal)."""
    assert sorted(a) == sorted(b)
    differences = [0.0]
    for key in a:
        if not isinstance(a[key], torch.Tensor):
            assert a[key] == b[key], key
            continue
        assert a[key].shape == b[key].shape, key
        differences.append(float((a[key].double() - b[key].double()).abs().max()))
    return max(differences)


@pytest.mark.slow
def test_classifier_under_fsdp2_equals_one_process(fsdp2, single):
    ours = result(fsdp2, "classifier")
    assert ours["sharded"] and ours["steps"] == 5  # the parameters really were DTensors
    assert not single["classifier"]["sharded"]
    difference = max_difference(ours["state"], single["classifier"]["state"])
    print(f"\nImageClassifier, 5 steps: max |FSDP2 - one process| = {difference:.2e}")
    assert difference < 1e-5
    assert max_difference(ours["state"], result(fsdp2, "classifier", rank=1)["state"]) == 0.0


@pytest.mark.slow
def test_local_learning_with_man_under_fsdp2_equals_one_process(fsdp2, single):
    ours, reference = result(fsdp2, "local_learning")["state"], single["local_learning"]["state"]
    ema = [key for key in ours if ".ema." in key]
    backbone = [key for key in ours if key.startswith("backbone.")]
    assert ema and backbone
    ema_difference = max_difference({k: ours[k] for k in ema}, {k: reference[k] for k in ema})
    backbone_difference = max_difference({k: ours[k] for k in backbone}, {k: reference[k] for k in backbone})
    all_difference = max_difference(ours, reference)
    print(
        f"\nDGL+MAN, K=3, clipped, 5 steps: max |FSDP2 - one process| EMA {ema_difference:.2e}, "
        f"backbone {backbone_difference:.2e}, everything {all_difference:.2e}"
    )
    assert ema_difference < 1e-6
    assert backbone_difference < 1e-6
    assert all_difference < 1e-6
    tracked = "backbone.layers.fc2.0.weight"  # the block the first head's EMA follows
    assert not torch.equal(ours["aux_heads.0.ema.0.weight"], ours[tracked])  # the EMA lags the block


@pytest.mark.slow
def test_pskd_table_under_fsdp2_equals_one_process(fsdp2, single):
    ours, reference = result(fsdp2, "pskd")["uninterrupted"], single["pskd"]["uninterrupted"]
    table_difference = max_difference(ours["table"], reference["table"])
    state_difference = max_difference(ours["state"], reference["state"])
    print(f"\nPS-KD, 2 epochs: max |FSDP2 - one process| table {table_difference:.2e}, weights {state_difference:.2e}")
    assert bool(ours["table"]["seen"].any())
    assert table_difference < 1e-5 and state_difference < 1e-5
    # Every rank holds the whole table.
    assert max_difference(ours["table"], result(fsdp2, "pskd", rank=1)["uninterrupted"]["table"]) == 0.0


@pytest.mark.slow
def test_monitors_under_fsdp2_measure_what_one_process_measures(fsdp2, single):
    ours, reference = result(fsdp2, "monitors"), single["monitors"]
    assert ours["steps"] == reference["steps"] == [0, 2, 4]
    assert sorted(ours["history"]) == sorted(reference["history"])
    assert {"lc/train", "lc/heldout", "lc/random", "lc1/heldout", "robust/acc", "robust/clean_acc"} <= set(
        ours["history"]
    )
    print("\nmonitor values, FSDP2 vs one process:")
    for name, values in sorted(ours["history"].items()):
        print(f"  {name}: {values} vs {reference['history'][name]}")
        assert values == pytest.approx(reference["history"][name], abs=1e-9, nan_ok=True), name  # 1 point: no SE
    assert any(value > 0 for value in ours["history"]["lc/train"])
    assert any(value > 0 for value in ours["history"]["robust/clean_acc"])
    other_rank = result(fsdp2, "monitors", rank=1)["history"]  # every rank logs the same value (NaN: 1 point, no SE)
    assert sorted(other_rank) == sorted(ours["history"])
    for name, values in ours["history"].items():
        assert other_rank[name] == pytest.approx(values, abs=0.0, nan_ok=True), name


@pytest.mark.slow
def test_fsdp2_checkpoint_loads_with_weights_only_and_resumes(fsdp2, single):
    ours = result(fsdp2, "pskd")
    checkpoint = torch.load(ours["checkpoint"], weights_only=True)
    # A full state dict (save_distributed_checkpoint=False): plain tensors, the single-process keys and shapes.
    reference = single["pskd"]["uninterrupted"]["state"]
    state = checkpoint["state_dict"]
    assert sorted(state) == sorted(reference)
    assert all(type(value) is torch.Tensor and value.shape == reference[key].shape for key, value in state.items())
    assert checkpoint["optimizer_states"] and checkpoint["callbacks"]["ProgressiveSelfKD"]["table"] is not None
    resumed, uninterrupted = ours["resumed"], ours["uninterrupted"]
    state_difference = max_difference(resumed["state"], uninterrupted["state"])
    table_difference = max_difference(resumed["table"], uninterrupted["table"])
    print(f"\nresumed vs uninterrupted under FSDP2: weights {state_difference:.2e}, table {table_difference:.2e}")
    assert state_difference < 1e-6 and table_difference < 1e-6


@pytest.mark.slow
def test_local_learning_saves_the_same_share_of_activations_under_fsdp2(fsdp2, single):
    ours, reference = result(fsdp2, "saved_bytes"), single["saved_bytes"]
    ratio, reference_ratio = ours["local"] / ours["end_to_end"], reference["local"] / reference["end_to_end"]
    print(f"\nlocal/end-to-end peak saved bytes: FSDP2 {ours} ({ratio:.3f}); one process {reference_ratio:.3f}")
    assert ratio < 1.0
    assert ratio == pytest.approx(reference_ratio, rel=0.03)


# -- fast checks, one process ----------------------------------------------------------------------------------------


class _Rank:
    def __init__(self, global_rank: int, world_size: int) -> None:
        self.global_rank, self.world_size = global_rank, world_size


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("count", [1, 2, 5, 7])
def test_even_shard_gives_every_rank_the_same_rows_and_each_point_once(count, world_size):
    points = torch.arange(10, 10 + count)
    shards = [ScheduledMonitor.even_shard(_Rank(rank, world_size), points) for rank in range(world_size)]
    assert len({len(shard) for shard, _ in shards}) == 1  # the same forwards (and chunks) on every rank
    real = torch.cat([shard[:n] for shard, n in shards])
    assert sorted(real.tolist()) == points.tolist()
    assert all((shard[n:] == points[0]).all() for shard, n in shards)


@pytest.fixture
def one_process_mesh():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


def test_fully_shard_task_shards_man_ema_like_its_block_and_lets_local_steps_run_first(one_process_mesh):
    seed_everything(0)
    task = LocalLearningClassifier(mlp(), 10, K=3, split=[0, 1], man=True, input_shape=(1, 8, 8), head_norm=False)
    names = [name for name, _ in sharding_units(task)]
    assert names.index("aux_heads.0.ema") < names.index("aux_heads.0")  # children before parents
    assert {"backbone.layers.fc1", "backbone.layers.fc3", "backbone.head", "aux_heads.1"} <= set(names)
    assert fully_shard_task(task, one_process_mesh) == [*names, ""]
    assert fully_shard_task(task, one_process_mesh) == [*names, ""]  # idempotent
    ema, block = task.aux_heads["0"].ema[0].weight, task.backbone.layers.fc2[0].weight
    assert isinstance(ema, DTensor) and ema.placements == block.placements and ema.device_mesh == block.device_mesh
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    # Local learning calls the units one by one before the root ever runs; the root must still become the root.
    task.local_backward(x, y, backward=torch.Tensor.backward)
    assert task(x).shape == (4, 10)
    with torch.no_grad():
        block.add_(1.0)
    expected = 0.5 * ema.full_tensor() + 0.5 * block.full_tensor()
    task.aux_heads["0"].update_ema(momentum=0.5)
    assert torch.allclose(task.aux_heads["0"].ema[0].weight.full_tensor(), expected)
