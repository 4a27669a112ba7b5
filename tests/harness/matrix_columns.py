"""How each column of the compatibility matrix runs an entry (``*_attempt``) and proves a cell (``*_prove``)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback, Trainer

from tests.harness.compare import assert_same_state
from tests.harness.matrix_cells import Proven
from tests.harness.matrix_runs import (
    Outcome,
    assert_close_callbacks,
    check_error,
    fit_cell,
    relative_update_error,
    trains_differently,
)
from tests.harness.registry import MethodSetting, ddp_spawn, ddp_spawn_unused_parameters
from tests.harness.runs import DDP_BATCH, SINGLE_BATCH, initial_state
from tests.helpers.trainers import CrashAtEpoch

if TYPE_CHECKING:
    from tests.harness.matrix import MatrixSession

COMPILE_BACKEND = "aot_eager"


# bf16-mixed -------------------------------------------------------------------------------------------------------

BF16_CALLBACK_ATOL = 0.02  # PS-KD's stored probabilities and the other callbacks' floats
BF16_MONITOR_ATOL = 0.5  # monitors' measurements after the first (counts over 12-16 points)


def bf16_attempt(entry: MethodSetting, root: Path, probe: Callback | None = None) -> Outcome:
    callbacks = [probe] if probe is not None else []
    return fit_cell(entry, root, callbacks=callbacks, accelerator="cpu", devices=1, precision="bf16-mixed")


class LogitDtypes(Callback):
    """The dtypes of the ``logits`` (or, for a task without, ``features``) that ``training_step`` returned (bf16
    shows autocast was on)."""

    def __init__(self) -> None:
        self.dtypes: set[torch.dtype] = set()

    def on_train_batch_end(self, trainer: Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any) -> None:
        if isinstance(outputs, Mapping):
            produced = outputs.get("logits", outputs.get("features"))
            if isinstance(produced, torch.Tensor):
                self.dtypes.add(produced.dtype)


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
        raise KeyError(f"{entry.name}: add its ddp_strategy's launcher-started form to matrix_columns._EXTERNAL_DDP")
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
    col, outcomes = session.two_processes(col_key, entry)
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
