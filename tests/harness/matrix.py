"""The compatibility matrix: every registry entry × every way of running it, declared, proven, documented.

Each (entry, column) cell is declared below as :class:`Proven` (equal to a reference run within a stated
tolerance) or :class:`Error` (an exception of a given type whose message matches a pattern, raised before the
first optimizer step). ``tests/test_compatibility_matrix.py`` runs every cell the matrix owns (``python -m
pytest -m matrix``); the ``single``, ``ddp`` and ``stop and resume`` cells are proven by
``tests/test_method_harness.py`` and only referenced here. ``python -m tests.harness.matrix`` writes
``docs/compatibility.md`` from these declarations (a fast test checks that the page is what they render).

The declarations' types are in :mod:`~tests.harness.matrix_cells`, the runs and comparisons in
:mod:`~tests.harness.matrix_runs`, each column's run and proof in :mod:`~tests.harness.matrix_columns` and the page
in :mod:`~tests.harness.matrix_page`.

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
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from tests.harness.matrix_cells import (
    HARNESS_TESTS,
    Cell,
    Column,
    Error,
    Proven,
    show_atol,
    show_clip_bound,
    show_reference,
    show_relative_update,
)
from tests.harness.matrix_columns import (
    BF16_CALLBACK_ATOL,
    BF16_MONITOR_ATOL,
    CLIP_RTOL,
    COMPILE_BACKEND,
    accumulate_attempt,
    accumulate_prove,
    bf16_attempt,
    bf16_prove,
    clip_attempt,
    clip_prove,
    compile_attempt,
    compile_prove,
    fsdp2_attempt,
    fsdp2_env,
    fsdp2_prove,
    nodes_attempt,
    nodes_env,
    nodes_prove,
    resume_prove,
)
from tests.harness.matrix_runs import Outcome, check_error, fit_cell, launch
from tests.harness.registry import REGISTRY, MethodSetting, setting
from tests.harness.runs import run_uninterrupted

__all__ = [
    "COLUMNS",
    "DECLARED",
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
    "verify",
]


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

    def two_processes(self, col_key: str, entry: MethodSetting) -> tuple[Column, list[Outcome]]:
        """The column called ``col_key`` and the outcome on each rank of ``entry`` in it."""
        col = column(col_key)
        return col, self.processes(col, entry)

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


COLUMNS: tuple[Column, ...] = (
    Column(
        "single",
        "single",
        runs="One process, fp32, global batch 32, the entry's `max_epochs` and `limit_train_batches` (the harness's "
        "`run_uninterrupted`). It is the reference of every other column.",
        compares="The fit trains: finite weights, some weight or buffer changed, every stateful callback's state "
        "filled or moved (`test_fit_trains_and_the_method_leaves_state`).",
        why_tol="—",
        show=show_reference,
    ),
    Column(
        "ddp",
        "ddp",
        runs="Two processes, `ddp_spawn` (gloo), 16 samples per rank, rank r reading samples r, r+2, … "
        "(`use_distributed_sampler=False`), so each step's union is the single process's batch.",
        compares="Final weights, buffers and callback states: rank 1 equals rank 0 exactly, rank 0 equals `single` "
        "within the entry's `atol` (`test_two_ddp_processes_equal_one_on_the_same_global_batches`, marked `slow`).",
        why_tol="float32 sums in another order (the all-reduce); observed ~3e-8.",
        show=show_atol,
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
        show=show_relative_update,
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
        show=show_atol,
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
        show=show_atol,
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
        show=show_clip_bound,
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
        show=show_atol,
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
        show=show_atol,
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
        show=show_atol,
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
_LLC_NEEDS_WHOLE_TENSORS = Error(
    ValueError,
    r"LocalLearningCoefficientMonitor samples clones of the whole parameters, and these are sharded",
    why="the chains need whole tensors",
    fix="Measure the LLC under DDP or on one process; the other monitors run under FSDP2.",
)
_INP_FORMER_CLIPS = Error(
    MisconfigurationException,
    r"You have set `Trainer\(gradient_clip_val=.*\)` and have passed `clip_gradients\(gradient_clip_val=0\.1\)`",
    why="the task clips",
    fix="INPFormer clips to the official norm 0.1 itself: set `grad_clip_norm` on the task (None hands clipping back "
    "to the Trainer's `gradient_clip_val`).",
)
_INP_FORMER_NOT_SHARDED = Error(
    TypeError,
    r"When using the ModelParallelStrategy, you are required to override the `configure_model\(\)` hook",
    why="not sharded yet",
    fix="Run INPFormer on one device or with DDP; its frozen encoder and small decoder fit one device.",
)
_RESUME_BY_HAND = Proven(0.0, route="a checkpoint saved by hand after epoch 0")
_GCD_ACCUMULATES_DIFFERENTLY = (
    "Two accumulated batches of 16 images sum two 16-image batch losses (SupCon, InfoNCE, the mean-entropy term, the "
    "means over labelled rows) and update the LER prior q̂ twice: not the loss of one 32-image batch"
)


_MIXING_ACCUMULATES_DIFFERENTLY = (
    "Two accumulated batches of 16 are each mixed within themselves and draw two λ: not the mixing of one 32-image "
    "batch"
)


def _mixing_row() -> dict[str, Cell]:
    pairs = setting("mixup").ddp_differs_because
    return _row(
        ddp=replace(DDP, differs_because=pairs),
        accumulate=Proven(0.0, differs_because=_MIXING_ACCUMULATES_DIFFERENTLY),
        nodes=Proven(0.0, differs_because=pairs),
        fsdp2=Proven(0.0, differs_because=pairs),
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
    "crrelu": _row(),
    "metrics_summary": _row(),
    "label_smoothing": _row(),
    "pskd": _row(),
    "pskd+label_smoothing": _row(),
    "mixup": _mixing_row(),
    "cutmix": _mixing_row(),
    "mixup_cutmix+pskd+label_smoothing": _mixing_row(),
    "local_complexity_monitor": _row(),
    "robustness_monitor": _row(),
    # λ̂ multiplies loss differences by nβ ≈ 176: the ~1e-7 weight differences DDP's reduction leaves come back ×1e2
    "llc_monitor": _row(
        ddp=replace(DDP, tol=1e-3),
        nodes=Proven(1e-3),
        accumulate=replace(ACCUMULATE, tol=1e-3),
        fsdp2=_LLC_NEEDS_WHOLE_TENSORS,
    ),
    "information_plane_monitor": _row(),
    "neural_collapse_monitor": _row(),
    "dse_monitor": _row(),
    "aem": _row(),
    "aggregate_response": _row(),
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
    # AdamW with the official eps=1e-10 amplifies float32 sums in another order (see the registry entry)
    "inp_former": _row(
        ddp=replace(DDP, tol=1e-4),
        nodes=Proven(1e-4),
        accumulate=replace(ACCUMULATE, tol=1e-4),
        clip=_INP_FORMER_CLIPS,
        fsdp2=_INP_FORMER_NOT_SHARDED,
    ),
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


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.harness.matrix [--check]``: write ``docs/compatibility.md`` (or check it is current)."""
    from tests.harness import matrix_page  # it reads this module's declarations

    parser = argparse.ArgumentParser(prog="python -m tests.harness.matrix", description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from the declarations")
    return matrix_page.write(check=parser.parse_args(argv).check)


if __name__ == "__main__":
    sys.exit(main())
