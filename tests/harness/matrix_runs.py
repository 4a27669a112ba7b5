"""Running one matrix cell: its outcome on each rank, the comparisons, and the two-process launcher."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.harness.compare import assert_same_state, assert_trained
from tests.harness.matrix_cells import Column, Error, Proven
from tests.harness.registry import MethodSetting
from tests.harness.runs import SINGLE_BATCH, final_state, initial_state
from tests.helpers.ddp import find_free_port
from tests.helpers.trainers import QUIET

if TYPE_CHECKING:
    from tests.harness.matrix import MatrixSession

ROOT = Path(__file__).resolve().parents[2]
PROCESS_TIMEOUT_S = 240  # one launch runs every entry of a column; a hung collective fails the column after this


@dataclass
class Outcome:
    """What one rank's run of a cell left: its final state or its error, and what the Trainer reported.

    Attributes:
        state: :func:`tests.harness.runs.final_state` at the end of fit (sharded tensors gathered), or ``None``.
        error: ``(qualified names of the exception's classes, message)`` or ``None``.
        global_step: optimizer steps taken (when the error was raised, for an error).
        facts: the Trainer's ``num_nodes``, ``num_devices``, ``world_size``, ``global_rank``, strategy, cluster
            environment, and whether the parameters were sharded (DTensors) during fit.
    """

    state: dict[str, Any] | None
    error: tuple[list[str], str] | None
    global_step: int
    facts: dict[str, Any]

    def expect_success(self, what: str) -> dict[str, Any]:
        if self.error is not None:
            names, message = self.error
            raise AssertionError(f"{what} raised {names[0]}: {message}")
        assert self.state is not None
        return self.state

    def to_json(self) -> dict[str, Any]:
        return {"error": self.error, "global_step": self.global_step, "facts": self.facts}


def qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _full_tensors(value: Any) -> Any:
    """``value`` with every DTensor gathered into a plain tensor (a collective: every rank calls it in order)."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        return value.full_tensor().detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _full_tensors(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_full_tensors(v) for v in value)
    return value


def _is_sharded(module: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


class SaveFullState(Callback):
    """Each rank writes :func:`final_state` (DTensors gathered) to ``<out_dir>/rank<r>.pt`` at the end of fit.

    The harness's ``SaveFinalState`` would save DTensors, which ``torch.load(weights_only=True)`` refuses.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.sharded = False

    def on_train_start(self, trainer: Trainer, pl_module: pl.LightningModule) -> None:
        self.sharded = _is_sharded(pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: pl.LightningModule) -> None:
        state = _full_tensors(final_state(trainer, pl_module))
        torch.save(state, Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


def fit_cell(
    entry: MethodSetting,
    root: Path,
    *,
    per_rank_batch: int = SINGLE_BATCH,
    limit_train_batches: int | None = None,
    max_epochs: int | None = None,
    make_task: Callable[[], Any] | None = None,
    callbacks: Iterable[Callback] = (),
    ckpt_path: Path | None = None,
    **trainer_kwargs: Any,
) -> Outcome:
    """:func:`tests.harness.runs.fit_setting`'s run of ``entry``, caught: the state or the error of this rank.

    The same seed, Trainer arguments, callbacks (the entry's, a checkpoint at every epoch end) and data as
    ``fit_setting``; ``make_task`` replaces the entry's task factory (e.g. compiled), ``callbacks`` are added last.
    """
    root.mkdir(parents=True, exist_ok=True)
    seed_everything(0)
    task = (make_task or entry.make_task)()
    saver = SaveFullState(str(root))
    trainer, error = None, None
    try:
        trainer = Trainer(
            max_epochs=max_epochs or entry.max_epochs,
            limit_train_batches=limit_train_batches or entry.limit_train_batches,
            limit_val_batches=1,
            use_distributed_sampler=False,
            default_root_dir=root,
            callbacks=[
                *entry.make_callbacks(),
                ModelCheckpoint(dirpath=root, save_last=True, save_top_k=-1),
                saver,
                *callbacks,
            ],
            **{**QUIET, "enable_checkpointing": True},
            **trainer_kwargs,
        )
        trainer.fit(task, entry.datamodule(root, per_rank_batch), ckpt_path=ckpt_path)
    except Exception as exc:  # the cell's outcome: an Error cell expects it, a Proven cell reports it
        error = ([qualified(cls) for cls in type(exc).__mro__], str(exc))
    if trainer is None:  # the Trainer refused its arguments
        return Outcome(None, error, 0, {})
    strategy = trainer.strategy
    facts = {
        "num_nodes": trainer.num_nodes,
        "num_devices": trainer.num_devices,
        "world_size": trainer.world_size,
        "global_rank": trainer.global_rank,
        "strategy": type(strategy).__name__,
        "environment": type(getattr(strategy, "cluster_environment", None)).__name__,
        "sharded": saver.sharded,
    }
    state = None
    if error is None:
        state = torch.load(root / f"rank{trainer.global_rank}.pt", weights_only=True)
    return Outcome(state, error, trainer.global_step, facts)


def check_error(outcomes: list[Outcome], expected: Error, what: str) -> None:
    """Every rank raised ``expected`` before its first optimizer step."""
    for rank, outcome in enumerate(outcomes):
        where = f"{what} (rank {rank})" if len(outcomes) > 1 else what
        assert outcome.error is not None, f"{where} was declared to raise {expected.type.__name__} but trained"
        names, message = outcome.error
        assert qualified(expected.type) in names, (
            f"{where} raised {names[0]}, declared {qualified(expected.type)}: {message}"
        )
        assert re.search(expected.pattern, message), (
            f"{where}: the message does not match {expected.pattern!r}: {message}"
        )
        assert outcome.global_step == 0, f"{where} raised after {outcome.global_step} optimizer steps, not at the start"


def trains_differently(
    entry: MethodSetting, declared: Proven, session: MatrixSession, state: dict[str, Any], what: str
) -> bool:
    """For a cell declared ``differs_because``: check that the run trained, and say so (skip the comparison)."""
    if declared.differs_because is None:
        return False
    assert_trained(initial_state(entry), state["weights"], f"{entry.name} {what}")
    return True


def relative_update_error(
    initial: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], actual: Mapping[str, torch.Tensor]
) -> float:
    """``‖(w_actual − w_0) − (w_expected − w_0)‖ / ‖w_expected − w_0‖`` over every float tensor of the state.

    Comparing the updates rather than the weights keeps the initialization (equal in both runs) from hiding a
    wrong update. A tensor without a starting value of its final shape (a buffer sized from the data) starts at 0.
    """
    assert sorted(expected) == sorted(actual), f"state keys {sorted(expected)} vs {sorted(actual)}"
    difference = norm = 0.0
    for name, value in expected.items():
        if not value.is_floating_point():
            assert torch.equal(value, actual[name]), f"{name}: integer/bool tensors differ"
            continue
        start = initial.get(name)
        start = start if start is not None and start.shape == value.shape else torch.zeros_like(value)
        update = value.double() - start.double()
        difference += float((actual[name].double() - start.double() - update).pow(2).sum())
        norm += float(update.pow(2).sum())
    if norm == 0.0:
        return 0.0 if difference == 0.0 else float("inf")
    return (difference / norm) ** 0.5


def assert_close_callbacks(expected: dict[str, Any], actual: dict[str, Any], atol: float, later_atol: float) -> None:
    """Callback states within ``atol``; a monitor's: schedule and points exactly, its first measurement within
    1e-6 (the same initial model), its later measurements within ``later_atol``.

    A monitor measures counts over its 12-16 points (linear regions around a point, attacks that succeed), which
    are discontinuous in the weights: a model a little different may change them by several of its points.
    """
    assert sorted(expected) == sorted(actual), f"callbacks {sorted(expected)} vs {sorted(actual)}"
    for key, state in expected.items():
        other, path = actual[key], f"callbacks[{key!r}]"
        if not (isinstance(state, dict) and "history" in state and "measured_steps" in state):
            assert_same_state(state, other, atol, path)
            continue
        rest = {k: v for k, v in state.items() if k != "history"}
        assert_same_state(rest, {k: other[k] for k in rest}, 0.0, path)
        assert sorted(state["history"]) == sorted(other["history"]), f"{path}: measured quantities differ"
        for name, series in state["history"].items():
            assert len(series) == len(other["history"][name]) > 0, f"{path}[{name!r}]: lengths differ"
            assert_same_state(series[:1], other["history"][name][:1], 1e-6, f"{path}[{name!r}] first")
            assert_same_state(series[1:], other["history"][name][1:], later_atol, f"{path}[{name!r}] later")


def launch(col: Column, names: list[str], root: Path, timeout: float = PROCESS_TIMEOUT_S) -> dict[str, list[Outcome]]:
    """Start two processes that run ``names`` under ``col`` in turn; each rank's outcome of each entry.

    Each process gets ``MASTER_ADDR=127.0.0.1`` and the column's per-rank variables (``NODE_RANK``, ``LOCAL_RANK``,
    ``WORLD_SIZE``); with ``LOCAL_RANK`` set, Lightning's ``LightningEnvironment`` starts no processes of its own.
    Each entry gets its own process group on its own port, so an entry that fails cannot desynchronize the next.
    """
    assert col.processes is not None
    ports = _free_ports(len(names))
    command = [sys.executable, "-c", "from tests.harness.matrix import node_main; node_main()", col.key, str(root)]
    arguments = [f"{name}={port}" for name, port in zip(names, ports, strict=True)]
    procs, logs = [], []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(ports[0]), **col.processes(rank)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        log = (root / f"rank{rank}.log").open("w")
        logs.append(log)
        procs.append(subprocess.Popen([*command, str(rank), *arguments], cwd=ROOT, env=env, stdout=log, stderr=log))
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    results: dict[str, list[Outcome]] = {}
    for name in names:
        outcomes = []
        for rank in range(2):
            path = root / name / f"outcome-rank{rank}.json"
            if not path.exists():
                tail = (root / f"rank{rank}.log").read_text()[-3000:]
                raise AssertionError(
                    f"{col.title}: rank {rank} left no outcome for {name} (exit code {procs[rank].returncode}, "
                    f"time limit {timeout:.0f} s). The end of its log:\n{tail}"
                )
            saved = json.loads(path.read_text())
            state_path = root / name / f"rank{rank}.pt"
            state = torch.load(state_path, weights_only=True) if saved["error"] is None else None
            error = tuple(saved["error"]) if saved["error"] is not None else None
            outcomes.append(Outcome(state, error, saved["global_step"], saved["facts"]))  # type: ignore[arg-type]
        results[name] = outcomes
    return results


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(find_free_port())
    return sorted(ports)
