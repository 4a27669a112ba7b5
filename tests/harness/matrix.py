"""The compatibility matrix: every registry entry × every way of running it, declared, proven, documented.

Each (entry, column) cell is declared below as :class:`Proven` (equal to a reference run within a stated
tolerance) or :class:`Error` (an exception of a given type whose message matches a pattern, raised before the
first optimizer step). ``tests/test_compatibility_matrix.py`` runs every cell the matrix owns (``python -m
pytest -m matrix``); the ``single``, ``ddp`` and ``stop and resume`` cells are proven by
``tests/test_method_harness.py`` and only referenced here. ``python -m tests.harness.matrix`` writes
``docs/compatibility.md`` from these declarations (a fast test checks that the page is what they render).

Everything a Trainer is handed is built by module-level functions or classes (the harness convention: ddp_spawn
pickles it). The two-process columns (``num_nodes=2``, ``fsdp2``) launch two Python processes with the
environment a cluster launcher would set, each of which runs every entry of the column in turn
(:func:`node_main`), one process group per entry.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from tests.harness.compare import assert_same_state, assert_trained
from tests.harness.registry import REGISTRY, MethodSetting, ddp_spawn, ddp_spawn_unused_parameters, setting
from tests.harness.runs import DDP_BATCH, SINGLE_BATCH, final_state, initial_state, run_uninterrupted
from tests.helpers.ddp import find_free_port
from tests.helpers.trainers import QUIET, CrashAtEpoch

__all__ = [
    "COLUMNS",
    "DECLARED",
    "DOC",
    "Column",
    "Error",
    "MatrixSession",
    "Outcome",
    "Proven",
    "cell",
    "column",
    "fit_cell",
    "main",
    "node_main",
    "render",
    "verify",
]

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "compatibility.md"
HARNESS_TESTS = "tests/test_method_harness.py"
COMPILE_BACKEND = "aot_eager"
PROCESS_TIMEOUT_S = 240  # one launch runs every entry of a column; a hung collective fails the column after this


# ----------------------------------------------------------------------------------------------------------------
# Declarations
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Error:
    """The cell raises ``type`` (or a subclass) with a message matching ``pattern`` before the first optimizer step.

    Attributes:
        type: the exception class.
        pattern: a regular expression searched in the message.
        why: the short reason shown in the table.
        fix: what to do instead (the message should say it too).
    """

    type: type[BaseException]
    pattern: str
    why: str
    fix: str


@dataclass(frozen=True)
class Proven:
    """The cell equals its column's reference within ``tol`` (what ``tol`` bounds is the column's ``compares``).

    Attributes:
        tol: the tolerance; its meaning (absolute, relative, ...) is the column's.
        by: the test that proves the cell when it is not a matrix cell (``single``, ``ddp``, ``stop and resume``).
        route: how the column's setting reaches the entry when not as the column says (shown in the table).
        refuses: the error the column's own way raises for this entry (tested with the cell).
        differs_because: why the run is not compared with its reference (it computes something else by design);
            the cell then proves that the run trains (finite, changed) and, with two processes, that the ranks end
            identical. ``tol`` is unused.
    """

    tol: float
    by: str | None = None
    route: str | None = None
    refuses: Error | None = None
    differs_because: str | None = None


Cell = Proven | Error


@dataclass(frozen=True)
class Column:
    """One way of running an entry.

    Attributes:
        key: short id (test ids, declarations).
        title: the table's header.
        runs: what the column runs (the doc's footnote).
        compares: the reference, what is compared and what the tolerance bounds (the doc's footnote).
        why_tol: why the tolerance is what it is.
        show: the tolerance as shown in a table cell.
        prove: ``prove(entry, cell, session)`` raises ``AssertionError`` unless the cell is proven.
        attempt: ``attempt(entry, root) -> Outcome``: the column's plain run (the one an :class:`Error` cell raises in).
        processes: for two-process columns, the per-rank environment: ``processes(rank) -> env``.
        expect: facts the Trainer must report in each process (two-process columns).
    """

    key: str
    title: str
    runs: str
    compares: str
    why_tol: str
    show: Callable[[float], str]
    prove: Callable[[MethodSetting, Proven, MatrixSession], None] | None = None
    attempt: Callable[[MethodSetting, Path], Outcome] | None = None
    processes: Callable[[int], dict[str, str]] | None = None
    expect: Mapping[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# Running one cell
# ----------------------------------------------------------------------------------------------------------------


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


def _qualified(cls: type) -> str:
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
        error = ([_qualified(cls) for cls in type(exc).__mro__], str(exc))
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
        assert _qualified(expected.type) in names, (
            f"{where} raised {names[0]}, declared {_qualified(expected.type)}: {message}"
        )
        assert re.search(expected.pattern, message), (
            f"{where}: the message does not match {expected.pattern!r}: {message}"
        )
        assert outcome.global_step == 0, f"{where} raised after {outcome.global_step} optimizer steps, not at the start"


class MatrixSession:
    """The runs several cells share, computed once: each entry's one-process fp32 run and each two-process column."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._references: dict[str, dict[str, Any]] = {}
        self._processes: dict[str, dict[str, list[Outcome]]] = {}

    def dir(self, *parts: str) -> Path:
        path = self.root.joinpath(*(re.sub(r"[^\w.+-]", "_", part) for part in parts))
        path.mkdir(parents=True, exist_ok=True)
        return path

    def reference(self, entry: MethodSetting) -> dict[str, Any]:
        """``run_uninterrupted``: one process, fp32, the harness's global batch (``single``)."""
        if entry.name not in self._references:
            self._references[entry.name] = run_uninterrupted(entry, self.dir("reference", entry.name))
        return self._references[entry.name]

    def processes(self, col: Column, entry: MethodSetting) -> list[Outcome]:
        """The outcome on each rank of ``entry`` in the two-process column ``col`` (one launch for all entries)."""
        if col.key not in self._processes:
            names = [e.name for e in REGISTRY if cell_by(e, col) is None]
            self._processes[col.key] = launch(col, names, self.dir(col.key))
        return self._processes[col.key][entry.name]


def cell_by(entry: MethodSetting, col: Column) -> str | None:
    declared = cell(entry.name, col.key)
    return declared.by if isinstance(declared, Proven) else None


def verify(entry: MethodSetting, col: Column, session: MatrixSession) -> None:
    """Run the cell (entry, col) and check it is what is declared."""
    declared = cell(entry.name, col.key)
    what = f"{entry.name} under {col.title}"
    if isinstance(declared, Proven):
        assert declared.by is None, f"{what} is proven by {declared.by}, not by the matrix"
        assert col.prove is not None, f"the column {col.title} proves no cell itself"
        col.prove(entry, declared, session)
        return
    if col.processes is not None:
        check_error(session.processes(col, entry), declared, what)
    else:
        assert col.attempt is not None, f"the column {col.title} has no run to raise in"
        check_error([col.attempt(entry, session.dir(col.key, entry.name, "error"))], declared, what)


# ----------------------------------------------------------------------------------------------------------------
# Comparisons
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# The columns
# ----------------------------------------------------------------------------------------------------------------


def _number(value: float) -> str:
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{value:g}").replace("e+", "e")


def _atol(tol: float) -> str:
    return "exact" if tol == 0 else f"atol {_number(tol)}"


def _reference(tol: float) -> str:
    return "reference"


def _relative_update(tol: float) -> str:
    return f"Δw ≤ {tol:.0%}"


def _clip_bound(tol: float) -> str:
    return "exact, ‖g‖ ≤ c"


# bf16-mixed -------------------------------------------------------------------------------------------------------

BF16_CALLBACK_ATOL = 0.02  # PS-KD's stored probabilities and the other callbacks' floats
BF16_MONITOR_ATOL = 0.5  # monitors' measurements after the first (counts over 12-16 points)


def bf16_attempt(entry: MethodSetting, root: Path, probe: Callback | None = None) -> Outcome:
    callbacks = [probe] if probe is not None else []
    return fit_cell(entry, root, callbacks=callbacks, accelerator="cpu", devices=1, precision="bf16-mixed")


class LogitDtypes(Callback):
    """The dtypes of the ``logits`` that ``training_step`` returned (bf16 shows autocast was on)."""

    def __init__(self) -> None:
        self.dtypes: set[torch.dtype] = set()

    def on_train_batch_end(self, trainer: Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any) -> None:
        if isinstance(outputs, Mapping) and isinstance(outputs.get("logits"), torch.Tensor):
            self.dtypes.add(outputs["logits"].dtype)


def bf16_prove(entry: MethodSetting, declared: Proven, session: MatrixSession) -> None:
    probe = LogitDtypes()
    outcome = bf16_attempt(entry, session.dir("bf16", entry.name), probe)
    state = outcome.expect_success(f"{entry.name} in bf16-mixed")
    assert probe.dtypes == {torch.bfloat16} or (not probe.dtypes and outcome.global_step == 0), (
        f"training_step returned logits of {probe.dtypes}: the forward did not run under bf16 autocast"
    )
    reference = session.reference(entry)
    error = relative_update_error(initial_state(entry), reference["weights"], state["weights"])
    assert error <= declared.tol, (
        f"{entry.name}: the bf16-mixed weight update differs from fp32's by {error:.3g} (relative), > {declared.tol}"
    )
    assert_close_callbacks(reference["callbacks"], state["callbacks"], BF16_CALLBACK_ATOL, BF16_MONITOR_ATOL)


# accumulate_grad_batches=2 ----------------------------------------------------------------------------------------


def accumulate_attempt(entry: MethodSetting, root: Path) -> Outcome:
    """Half the reference's batch, twice the batches, two batches per optimizer step: the same global batches."""
    return fit_cell(
        entry,
        root,
        per_rank_batch=SINGLE_BATCH // 2,
        limit_train_batches=2 * entry.limit_train_batches,
        accelerator="cpu",
        devices=1,
        accumulate_grad_batches=2,
    )


def accumulate_prove(entry: MethodSetting, declared: Proven, session: MatrixSession) -> None:
    outcome = accumulate_attempt(entry, session.dir("accumulate", entry.name))
    state = outcome.expect_success(f"{entry.name} with accumulate_grad_batches=2")
    steps = entry.max_epochs * entry.limit_train_batches
    assert outcome.global_step == steps, f"{outcome.global_step} optimizer steps, expected {steps}"
    if not trains_differently(entry, declared, session, state, "accumulated"):
        assert_same_state(session.reference(entry), state, declared.tol, "accumulated vs doubled batch")


# torch.compile ----------------------------------------------------------------------------------------------------

COMPILED_CALLS = [0]


def counting_aot_eager(graph_module: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
    """The ``aot_eager`` backend, counting the calls of what it compiles (a cached graph counts too)."""
    from torch._dynamo import lookup_backend

    compiled = lookup_backend(COMPILE_BACKEND)(graph_module, example_inputs)

    def run(*args: Any) -> Any:
        COMPILED_CALLS[0] += 1
        return compiled(*args)

    run._boxed_call = getattr(compiled, "_boxed_call", False)  # type: ignore[attr-defined]
    return run


@dataclass(frozen=True)
class Compiled:
    """The entry's task wrapped by ``torch.compile`` (what ``trainer.fit(torch.compile(task))`` gets)."""

    make_task: Callable[[], pl.LightningModule]

    def __call__(self) -> Any:
        return torch.compile(self.make_task(), backend=counting_aot_eager)


def compile_attempt(entry: MethodSetting, root: Path) -> Outcome:
    return fit_cell(entry, root, make_task=Compiled(entry.make_task), accelerator="cpu", devices=1)


def compile_prove(entry: MethodSetting, declared: Proven, session: MatrixSession) -> None:
    before = COMPILED_CALLS[0]
    outcome = compile_attempt(entry, session.dir("compile", entry.name))
    state = outcome.expect_success(f"{entry.name} compiled")
    calls = COMPILED_CALLS[0] - before
    assert calls >= max(outcome.global_step, 1), (
        f"compiled graphs ran {calls} times in {outcome.global_step} training steps: the task ran eagerly"
    )
    assert_same_state(session.reference(entry), state, declared.tol, "compiled vs eager")


# gradient clipping ------------------------------------------------------------------------------------------------

HUGE_CLIP = 1e9  # far above any gradient norm: clipping must change nothing
CLIP_RTOL = 1e-5  # clip_grad_norm_ scales by c / (norm + 1e-6): the norm it leaves, within float32 rounding


def _gradient_norm(trainer: Trainer) -> float:
    grads = [p.grad for opt in trainer.optimizers for g in opt.param_groups for p in g["params"] if p.grad is not None]
    assert grads, "no gradients to measure"
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads])))


class GradientNorms(Callback):
    """The total gradient norm of every optimizer step: in ``on_before_optimizer_step`` (before Lightning's
    clipping; after a task's own clipping) and after the step (the gradients the step used)."""

    def __init__(self) -> None:
        self.before: list[float] = []
        self.after: list[float] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.before.append(_gradient_norm(trainer))

    def on_train_batch_end(self, trainer: Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if len(self.after) < len(self.before):
            self.after.append(_gradient_norm(trainer))


@dataclass(frozen=True)
class WithTaskClipping:
    """The entry's task rebuilt with ``gradient_clip_val=value`` (the route of tasks that clip themselves).

    The rebuilt task takes the original's weights and the RNG continues as if the original were used, so an
    inactive clip gives the reference run exactly.
    """

    make_task: Callable[[], pl.LightningModule]
    value: float

    def __call__(self) -> pl.LightningModule:
        task = self.make_task()
        rng = torch.random.get_rng_state()
        clipped = type(task)(task.backbone, **{**task.hparams, "gradient_clip_val": self.value})
        clipped.load_state_dict(task.state_dict())
        torch.random.set_rng_state(rng)
        return clipped


def clips_itself(entry: MethodSetting) -> bool:
    """The task takes ``gradient_clip_val`` itself (local learning: Lightning clips under automatic optimization)."""
    return "gradient_clip_val" in entry.make_task().hparams


def clip_attempt(entry: MethodSetting, root: Path, value: float = HUGE_CLIP, probe: Callback | None = None) -> Outcome:
    """``Trainer(gradient_clip_val=value)``."""
    callbacks = [probe] if probe is not None else []
    return fit_cell(entry, root, callbacks=callbacks, accelerator="cpu", devices=1, gradient_clip_val=value)


def _clipped_run(entry: MethodSetting, root: Path, value: float, route: str | None) -> tuple[Outcome, GradientNorms]:
    probe = GradientNorms()
    if route is None:
        return clip_attempt(entry, root, value, probe), probe
    make_task = WithTaskClipping(entry.make_task, value)
    return fit_cell(entry, root, make_task=make_task, callbacks=[probe], accelerator="cpu", devices=1), probe


def clip_prove(entry: MethodSetting, declared: Proven, session: MatrixSession) -> None:
    if declared.refuses is not None:
        check_error([clip_attempt(entry, session.dir("clip", entry.name, "trainer"))], declared.refuses, entry.name)
    assert (declared.route is not None) == clips_itself(entry), f"{entry.name}: declare the route of its clipping"
    reference = session.reference(entry)
    huge, probe = _clipped_run(entry, session.dir("clip", entry.name, "huge"), HUGE_CLIP, declared.route)
    assert_same_state(reference, huge.expect_success(f"{entry.name} clipped at {HUGE_CLIP:g}"), 0.0, "huge clip")
    value = statistics.median(probe.after) / 2  # below most steps' norm: clipping must act
    small, probe = _clipped_run(entry, session.dir("clip", entry.name, "small"), value, declared.route)
    state = small.expect_success(f"{entry.name} clipped at {value:g}")
    assert len(probe.after) == small.global_step > 0, "one gradient norm per optimizer step"
    bound = value * (1 + declared.tol)
    for step, (before, after) in enumerate(zip(probe.before, probe.after, strict=True)):
        assert after <= bound, f"step {step}: the gradient norm {after:.6g} exceeds the clip value {value:.6g}"
        # Lightning clips after on_before_optimizer_step, a task clipping itself before (the hook sees its result).
        expected = before * min(1.0, value / (before + 1e-6)) if declared.route is None else before
        assert abs(after - expected) <= declared.tol * expected, (
            f"step {step}: norm {before:.6g} clipped at {value:.6g} gave {after:.6g}, not {expected:.6g}"
        )
    with_clipping = {k: v for k, v in state["weights"].items() if v.is_floating_point()}
    changed = any(not torch.allclose(v, reference["weights"][k], rtol=0, atol=1e-6) for k, v in with_clipping.items())
    assert changed, f"clipping at {value:.6g} (half the median gradient norm) left the run unchanged"


# stop and resume (entries the harness cannot stop: no optimizer step, so no checkpoint before the end) -----------


def resume_prove(entry: MethodSetting, declared: Proven, session: MatrixSession) -> None:
    """As the harness's ``run_resumed``, but from a checkpoint saved by hand at the end of epoch 0."""
    root = session.dir("resume", entry.name)
    path = root / "epoch0.ckpt"
    stopped = fit_cell(entry, root / "stopped", callbacks=[SaveAtEpochEnd(str(path)), CrashAtEpoch(1)],
                       accelerator="cpu", devices=1)  # fmt: skip
    assert stopped.error is not None and "CRASH" in stopped.error[1], "the run was meant to crash at epoch 1"
    resumed = fit_cell(entry, root / "resumed", ckpt_path=path, accelerator="cpu", devices=1)
    state = resumed.expect_success(f"{entry.name} resumed")
    assert_same_state(session.reference(entry), state, declared.tol, "resumed vs uninterrupted")


class SaveAtEpochEnd(Callback):
    """``trainer.save_checkpoint(path)`` after epoch 0, where ModelCheckpoint would (it writes none without a step)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 0:
            trainer.save_checkpoint(self.path)


# two processes: num_nodes=2 and fsdp2 -----------------------------------------------------------------------------

# The one-process DDP strategies of the registry, launched by an external launcher instead of spawned.
_EXTERNAL_DDP = {None: "ddp", ddp_spawn: "ddp", ddp_spawn_unused_parameters: "ddp_find_unused_parameters_true"}


def external_ddp_strategy(entry: MethodSetting) -> str:
    """The entry's DDP strategy with processes started by a launcher (``ddp``) instead of spawned."""
    if entry.ddp_strategy not in _EXTERNAL_DDP:
        raise KeyError(f"{entry.name}: add its ddp_strategy's launcher-started form to matrix._EXTERNAL_DDP")
    return _EXTERNAL_DDP[entry.ddp_strategy]


def nodes_env(rank: int) -> dict[str, str]:
    """Node ``rank`` of two, one process each: what a cluster launcher exports."""
    return {"NODE_RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2"}


def nodes_attempt(entry: MethodSetting, root: Path) -> Outcome:
    return fit_cell(
        entry,
        root,
        per_rank_batch=DDP_BATCH,
        accelerator="cpu",
        devices=1,
        num_nodes=2,
        strategy=external_ddp_strategy(entry),
    )


def fsdp2_env(rank: int) -> dict[str, str]:
    """Process ``rank`` of two on one node."""
    return {"NODE_RANK": "0", "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}


def fsdp2_attempt(entry: MethodSetting, root: Path) -> Outcome:
    from lightning.pytorch.strategies import ModelParallelStrategy

    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=False)
    return fit_cell(entry, root, per_rank_batch=DDP_BATCH, accelerator="cpu", devices=2, strategy=strategy)


def processes_prove(entry: MethodSetting, declared: Proven, session: MatrixSession, col_key: str) -> None:
    col = column(col_key)
    outcomes = session.processes(col, entry)
    states = [out.expect_success(f"{entry.name} under {col.title} (rank {r})") for r, out in enumerate(outcomes)]
    for rank, outcome in enumerate(outcomes):
        facts = {key: outcome.facts[key] for key in col.expect}
        assert facts == dict(col.expect), f"rank {rank}: the Trainer reported {facts}, expected {dict(col.expect)}"
        assert outcome.facts["global_rank"] == rank
    assert_same_state(states[0], states[1], 0.0, "rank1 vs rank0")
    if not trains_differently(entry, declared, session, states[0], f"under {col.title}"):
        assert_same_state(session.reference(entry), states[0], declared.tol, f"{col.title} vs one process")


def nodes_prove(entry: MethodSetting, declared: Proven, session: MatrixSession) -> None:
    processes_prove(entry, declared, session, "nodes")


def fsdp2_prove(entry: MethodSetting, declared: Proven, session: MatrixSession) -> None:
    processes_prove(entry, declared, session, "fsdp2")


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


def node_main(argv: list[str] | None = None) -> None:
    """One rank of a two-process column: ``<column> <root> <rank> <entry>=<port> ...``, each entry in turn."""
    col_key, root, rank, *assignments = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(1)  # two processes on the CI's two cores
    col = column(col_key)
    assert col.attempt is not None
    for assignment in assignments:
        name, port = assignment.rsplit("=", 1)
        os.environ["MASTER_PORT"] = port
        out = Path(root) / name
        outcome = col.attempt(setting(name), out)
        (out / f"outcome-rank{rank}.json").write_text(json.dumps(outcome.to_json()))
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------
# The matrix
# ----------------------------------------------------------------------------------------------------------------

COLUMNS: tuple[Column, ...] = (
    Column(
        "single",
        "single",
        runs="One process, fp32, global batch 32, the entry's `max_epochs` and `limit_train_batches` (the harness's "
        "`run_uninterrupted`). It is the reference of every other column.",
        compares="The fit trains: finite weights, some weight or buffer changed, every stateful callback's state "
        "filled or moved (`test_fit_trains_and_the_method_leaves_state`).",
        why_tol="—",
        show=_reference,
    ),
    Column(
        "ddp",
        "ddp",
        runs="Two processes, `ddp_spawn` (gloo), 16 samples per rank, rank r reading samples r, r+2, … "
        "(`use_distributed_sampler=False`), so each step's union is the single process's batch.",
        compares="Final weights, buffers and callback states: rank 1 equals rank 0 exactly, rank 0 equals `single` "
        "within the entry's `atol` (`test_two_ddp_processes_equal_one_on_the_same_global_batches`, marked `slow`).",
        why_tol="float32 sums in another order (the all-reduce); observed ~3e-8.",
        show=_atol,
    ),
    Column(
        "bf16",
        "bf16-mixed",
        runs='`single` with `Trainer(precision="bf16-mixed")`: forward and loss under `torch.autocast("cpu", '
        "torch.bfloat16)`, float32 weights and optimizer.",
        compares="The total weight update `w_T − w_0` of the bf16 run against fp32's: `‖Δ_bf16 − Δ_fp32‖ / "
        "‖Δ_fp32‖ ≤ tol` over every float tensor of the state; callback floats (PS-KD's stored probabilities) within "
        f"{BF16_CALLBACK_ATOL}; monitors' schedule, points and first measurement (step 0, before any bf16 step) "
        f"exactly, their later measurements within {BF16_MONITOR_ATOL}.",
        why_tol="bf16 keeps 8 significant bits (unit roundoff 2⁻⁹ ≈ 0.2%); every forward and backward matmul "
        "sees that error and it compounds over the run's steps: observed 0.4%–6% (AugLocal the largest). A broken "
        "mixed-precision path (a lost or mis-scaled update, fp32 weights not updated) is off by ≥ 100%. Comparing "
        "the update, not the weights, keeps the shared initialization from hiding a wrong update. Monitors measure "
        "counts over 12–16 points (linear regions around a point: 1–4 per point here; attacks that succeed), "
        "discontinuous in the weights: on a model a few % different they moved by up to 0.33 (4 region crossings "
        "over 12 points); the first measurement, on the same initial model, shows the monitor itself is unchanged.",
        show=_relative_update,
        prove=bf16_prove,
        attempt=bf16_attempt,
    ),
    Column(
        "accumulate",
        "accumulate_grad_batches=2",
        runs="`single` with `Trainer(accumulate_grad_batches=2)`, batch 16 and twice the batches: the same "
        "optimizer steps on the same 32-sample global batches.",
        compares="Final weights, buffers and callback states against `single` (the doubled batch), and the "
        "number of optimizer steps.",
        why_tol="The mean over 32 samples as two halves (Lightning divides each loss by 2): float32 sums in "
        "another order; observed ~3e-8.",
        show=_atol,
        prove=accumulate_prove,
        attempt=accumulate_attempt,
    ),
    Column(
        "compile",
        "torch.compile",
        runs=f'`trainer.fit(torch.compile(task, backend="{COMPILE_BACKEND}"))`: Lightning compiles '
        "`forward` and the `*_step` methods. `aot_eager` (AOTAutograd, eager kernels) traces what `inductor` "
        "traces without generating code, which on 2 CPU cores would take minutes per entry.",
        compares="Final weights, buffers and callback states against `single` (eager); the compiled graphs "
        "must have run at least once per training step (a counting backend).",
        why_tol="The same kernels after AOTAutograd's decompositions; observed bitwise equal.",
        show=_atol,
        prove=compile_prove,
        attempt=compile_attempt,
    ),
    Column(
        "clip",
        "gradient clipping",
        runs="`single` with `Trainer(gradient_clip_val=c)` (norm), once with c = 1e9 and once with c = half the "
        "median gradient norm of the first run. Local learning clips in the task (`LocalLearningClassifier("
        "gradient_clip_val=c)`): Lightning clips only under automatic optimization.",
        compares="c = 1e9 equals the unclipped `single` exactly; with the small c every optimizer step's gradient "
        "norm (read after the step) is `norm · min(1, c / (norm + 1e-6))` of the norm before clipping (read in "
        "`on_before_optimizer_step`) within a relative tol, and at most `c·(1 + tol)`, and the weights differ from "
        "the unclipped run's.",
        why_tol="That is `clip_grad_norm_`'s scale: only float32 rounding of the norm remains; a scale of exactly "
        "1 leaves the run bitwise unchanged.",
        show=_clip_bound,
        prove=clip_prove,
        attempt=clip_attempt,
    ),
    Column(
        "resume",
        "stop and resume",
        runs="`single` stopped by an exception at the start of epoch 1, then resumed from `last.ckpt` with fresh "
        "objects (the harness's `run_resumed`). An entry that takes no optimizer step gets no checkpoint from "
        "`ModelCheckpoint` before the end of fit (the harness skips it): the matrix saves one with "
        "`trainer.save_checkpoint` at the end of epoch 0 instead, then stops and resumes the same way.",
        compares="Final weights, buffers and callback states against the uninterrupted `single` "
        "(`test_stopped_and_resumed_ends_where_uninterrupted_ends`; the harness also stops entries mid-epoch, "
        "`test_stopped_mid_epoch_and_resumed_ends_where_uninterrupted_ends`).",
        why_tol="A resumed run repeats the same float32 operations; observed bitwise equal.",
        show=_atol,
        prove=resume_prove,
    ),
    Column(
        "nodes",
        "num_nodes=2",
        runs='Two processes, one per "node", on the loopback interface: each gets `MASTER_ADDR=127.0.0.1`, '
        "`MASTER_PORT`, `NODE_RANK=0|1`, `LOCAL_RANK=0`, `WORLD_SIZE=2` (what a cluster launcher exports) and runs "
        '`Trainer(num_nodes=2, devices=1, strategy="ddp")` (`ddp_find_unused_parameters_true` for local '
        "learning), 16 samples per rank as in `ddp`. With `LOCAL_RANK` set, Lightning's `LightningEnvironment` "
        "starts no process itself; each process checks that the Trainer reports 2 nodes of 1 device, world size 2, "
        "`DDPStrategy` and global rank = node rank.",
        compares="As `ddp`: rank 1 equals rank 0 exactly, rank 0 equals `single` within tol.",
        why_tol="As `ddp`.",
        show=_atol,
        prove=nodes_prove,
        attempt=nodes_attempt,
        processes=nodes_env,
        expect={
            "num_nodes": 2,
            "num_devices": 1,
            "world_size": 2,
            "strategy": "DDPStrategy",
            "environment": "LightningEnvironment",
        },
    ),
    Column(
        "fsdp2",
        "fsdp2",
        runs="Two processes on one node (`LOCAL_RANK=0|1`, launched as for `num_nodes=2`), `Trainer(devices=2, "
        "strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, "
        "save_distributed_checkpoint=False))`: the task's `configure_model` applies `fully_shard`; 16 samples per "
        "rank as in `ddp`.",
        compares="The parameters were DTensors during fit; the final state (DTensors gathered with "
        "`full_tensor()`): rank 1 equals rank 0 exactly, rank 0 equals `single` within tol.",
        why_tol="Reduce-scatter instead of all-reduce: float32 sums in another order, as `ddp`.",
        show=_atol,
        prove=fsdp2_prove,
        attempt=fsdp2_attempt,
        processes=fsdp2_env,
        expect={
            "num_nodes": 1,
            "num_devices": 2,
            "world_size": 2,
            "strategy": "ModelParallelStrategy",
            "sharded": True,
        },
    ),
)


def column(key: str) -> Column:
    """The column called ``key``."""
    return next(col for col in COLUMNS if col.key == key)


# The cells most entries have.
SINGLE = Proven(0.0, by=f"{HARNESS_TESTS}::test_fit_trains_and_the_method_leaves_state")
DDP = Proven(1e-5, by=f"{HARNESS_TESTS}::test_two_ddp_processes_equal_one_on_the_same_global_batches")
BF16 = Proven(0.15)
ACCUMULATE = Proven(1e-5)
COMPILE = Proven(1e-5)
CLIP = Proven(CLIP_RTOL)
RESUME = Proven(1e-6, by=f"{HARNESS_TESTS}::test_stopped_and_resumed_ends_where_uninterrupted_ends")
NODES = Proven(1e-5)
FSDP2 = Proven(1e-5)

_MANUAL_ACCUMULATION = Error(
    MisconfigurationException,
    r"Automatic gradient accumulation is not supported for manual optimization\. Remove "
    r"`Trainer\(accumulate_grad_batches=2\)`",
    why="manual optimization",
    fix="Local learning takes one optimizer step per batch (K backwards, one step): train with a larger batch "
    "instead. Lightning's message also offers automatic optimization, which local learning cannot use.",
)
_TRAINER_CLIPPING = Error(
    MisconfigurationException,
    r"Automatic gradient clipping is not supported for manual optimization\. Remove `Trainer\(gradient_clip_val=",
    why="manual optimization",
    fix="Pass `gradient_clip_val` (and `gradient_clip_algorithm`) to `LocalLearningClassifier` (or "
    "`setup_local_learning`) instead of the Trainer.",
)
_LOCAL_CLIP = Proven(CLIP_RTOL, route="task argument `gradient_clip_val`", refuses=_TRAINER_CLIPPING)
_NO_OPTIMIZER_ACCUMULATION = replace(
    _MANUAL_ACCUMULATION,
    why="no optimizer",
    fix="Nothing to accumulate: the baseline computes its mean image in `on_train_start` and takes no optimizer "
    "step. Leave `accumulate_grad_batches` at 1.",
)
_NO_OPTIMIZER_CLIPPING = replace(
    _TRAINER_CLIPPING,
    why="no optimizer",
    fix="Nothing to clip: the baseline takes no optimizer step. Leave `gradient_clip_val` unset.",
)
_NOTHING_TO_SHARD = Error(
    TypeError,
    r"MeanImageAnomalyBaseline holds one mean image and trains nothing: there is nothing to shard",
    why="nothing to shard",
    fix='The baseline holds one mean image and trains nothing. Run it on one device or with DDP (`strategy="ddp"`), '
    "which it supports.",
)
_RESUME_BY_HAND = Proven(0.0, route="a checkpoint saved by hand after epoch 0")
_GCD_ACCUMULATES_DIFFERENTLY = (
    "Two accumulated batches of 16 images sum two 16-image batch losses (SupCon, InfoNCE, the mean-entropy term, the "
    "means over labelled rows) and update the LER prior q̂ twice: not the loss of one 32-image batch"
)


def _row(**cells: Cell) -> dict[str, Cell]:
    standard = {"single": SINGLE, "ddp": DDP, "bf16": BF16, "accumulate": ACCUMULATE, "compile": COMPILE,
                "clip": CLIP, "resume": RESUME, "nodes": NODES, "fsdp2": FSDP2}  # fmt: skip
    unknown = set(cells) - set(standard)
    assert not unknown, f"unknown columns {unknown}"
    return {**standard, **cells}


_LOCAL = {"accumulate": _MANUAL_ACCUMULATION, "clip": _LOCAL_CLIP}

DECLARED: dict[str, dict[str, Cell]] = {
    "image_classifier": _row(),
    "grokking_classifier": _row(),
    "metrics_summary": _row(),
    "label_smoothing": _row(),
    "pskd": _row(),
    "pskd+label_smoothing": _row(),
    "local_complexity_monitor": _row(),
    "robustness_monitor": _row(),
    "neural_collapse_monitor": _row(),
    "dse_monitor": _row(),
    "gcd_classifier": _row(
        ddp=replace(DDP, differs_because=setting("gcd_classifier").ddp_differs_because),
        accumulate=Proven(0.0, differs_because=_GCD_ACCUMULATES_DIFFERENTLY),
        nodes=Proven(0.0, differs_because=setting("gcd_classifier").ddp_differs_because),
        fsdp2=Proven(0.0, differs_because=setting("gcd_classifier").ddp_differs_because),
    ),
    "local_learning_dgl": _row(**_LOCAL),
    "local_learning_infopro": _row(**_LOCAL),
    "local_learning_auglocal": _row(**_LOCAL),
    "local_learning_man": _row(**_LOCAL),
    "local_learning_man_official": _row(**_LOCAL),
    "mean_image_anomaly_baseline": _row(
        accumulate=_NO_OPTIMIZER_ACCUMULATION,
        clip=_NO_OPTIMIZER_CLIPPING,
        resume=_RESUME_BY_HAND,
        fsdp2=_NOTHING_TO_SHARD,
    ),
}
"""The declared outcome of every (registry entry, column) cell."""


def cell(entry_name: str, column_key: str) -> Cell:
    """The declared outcome of the cell (``entry_name``, ``column_key``)."""
    return DECLARED[entry_name][column_key]


# ----------------------------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LastRun:
    """The last full run of ``python -m pytest -m matrix`` (update it, then regenerate the page)."""

    date: str
    machine: str
    duration: str
    versions: str
    result: str


LAST_RUN = LastRun(
    date="2026-12-02",
    machine="2 CPU cores (Intel Xeon), no GPU",
    duration="2 min 11 s (a clean clone's `.ci/run`, commit 5c0efc1, a quiet machine)",
    versions="torch 2.14.1, lightning 2.6.6",
    result="103 cells passed",
)

_ERROR_MARK = "✗"
_PROVEN_MARK = "✓"


_HARNESS_MARK = "ʰ"


_TWO_PROCESS_COLUMNS = ("ddp", "nodes", "fsdp2")


def _cell_text(col: Column, declared: Cell, notes: dict[str, int], differences: dict[str, int]) -> str:
    if isinstance(declared, Error):
        return f"{_ERROR_MARK} {declared.why} ({_note(notes, _error_note(col, declared))})"
    if declared.differs_because is not None:
        shown = "trains, ranks agree" if col.key in _TWO_PROCESS_COLUMNS else "trains"
        text = f"{_PROVEN_MARK} {shown}"
        text += f" {_HARNESS_MARK}" if declared.by is not None else ""
        return f"{text} ({_note(differences, declared.differs_because, 'd')})"
    text = f"{_PROVEN_MARK} {col.show(declared.tol)}"
    if declared.by is not None:
        text += f" {_HARNESS_MARK}"
    if declared.route is not None:
        text += f" via {declared.route}"
    if declared.refuses is not None:
        text += f"; the Trainer's: {_ERROR_MARK} {_note(notes, _error_note(col, declared.refuses))}"
    return text


def _error_note(col: Column, error: Error) -> str:
    return (
        f"{col.title}: `{_qualified(error.type)}` whose message matches `` {error.pattern} ``, raised on every rank "
        f"when fit starts (no optimizer step taken). {error.fix}"
    )


def _note(notes: dict[str, int], text: str, prefix: str = "e") -> str:
    number = notes.setdefault(text, len(notes) + 1)
    return f"[{prefix}{number}](#{prefix}{number})"


def render() -> str:
    """``docs/compatibility.md`` as the declarations say."""
    notes: dict[str, int] = {}
    differences: dict[str, int] = {}
    header = "| entry | " + " | ".join(col.title for col in COLUMNS) + " |"
    rows = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for entry in REGISTRY:
        cells = [_cell_text(col, cell(entry.name, col.key), notes, differences) for col in COLUMNS]
        rows.append(f"| `{entry.name}` | " + " | ".join(cells) + " |")
    harness = sorted({c.by for row in DECLARED.values() for c in row.values() if isinstance(c, Proven) and c.by})
    lines = [
        "# Compatibility matrix",
        "",
        "<!-- Generated by `python -m tests.harness.matrix` from tests/harness/matrix.py: do not edit by hand. -->",
        "",
        "Every method of the [method harness](../tests/harness/registry.py) (one canonical setting per public "
        "callback, mixin and task), run every way below on CPU. Each cell is proven (✓: equal to its reference "
        "run within the stated tolerance, or, where the method computes something else by design, trained with "
        "the ranks in agreement) or a clear error (✗: an exception of a stated type and message, raised "
        "when fit starts, before any optimizer step, saying what to do); no cell is untested.",
        "",
        *rows,
        "",
        f"{_HARNESS_MARK} proven by `{HARNESS_TESTS}` (the test named in the column's description below); every other "
        "cell by `tests/test_compatibility_matrix.py`.",
        "",
        "## Errors",
        "",
        *[f'- <a id="e{number}"></a>**e{number}.** {text}' for text, number in notes.items()],
        "",
        "## Not compared with one process",
        "",
        "These runs compute something other than their column's reference by design, as the method's official code "
        "does. Their cells prove that the run trains (finite weights, some weight or buffer changed) and, with two "
        "processes, that both ranks end with identical weights, buffers and callback states.",
        "",
        *[f'- <a id="d{number}"></a>**d{number}.** {text}.' for text, number in differences.items()],
        "",
        "## What each column runs and compares",
        "",
        "Every run starts from seed 0 with the entry's task, callbacks and data (`SequentialDigits` in a fixed "
        "order, or fake MVTec AD), `limit_val_batches=1` and a checkpoint at every epoch end.",
        "",
    ]
    for col in COLUMNS:
        lines += [
            f"- **{col.title}.** {col.runs}",
            f"  Compared: {col.compares}",
            f"  Tolerance: {col.why_tol}",
        ]
    lines += [
        "",
        "## Running it",
        "",
        "- Regenerate this page after changing the declarations: `python -m tests.harness.matrix` "
        "(`tests/test_compatibility_matrix.py` fails when the page differs from what they render).",
        "- Run the matrix's cells: `python -m pytest -m matrix`.",
        "- The `single`, `ddp` and `stop and resume` cells marked by the harness are proven by "
        + ", ".join(f"`{test}`" for test in harness)
        + " (`python -m pytest tests/test_method_harness.py`); the matrix does not repeat those runs.",
        "",
        f"Last run of `python -m pytest -m matrix`: {LAST_RUN.date}, {LAST_RUN.machine}, {LAST_RUN.versions}: "
        f"{LAST_RUN.result} in {LAST_RUN.duration}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.harness.matrix [--check]``: write ``docs/compatibility.md`` (or check it is current)."""
    parser = argparse.ArgumentParser(prog="python -m tests.harness.matrix", description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from the declarations")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = DOC.read_text() if DOC.exists() else ""
        if current != text:
            print(f"{DOC} is out of date: run python -m tests.harness.matrix", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
