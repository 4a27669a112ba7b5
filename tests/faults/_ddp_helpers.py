"""Two-process DDP on CPU for the ddp fault cases (no file of the suite: helpers only).

:func:`spawn` starts 2 gloo processes with ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` set, as ``torchrun`` does, so a
``Trainer(strategy=DDPStrategy())`` built inside them joins the running group instead of launching its own: one spawn
(the slow part, seconds) runs many small fits (a tenth of a second each). A rank's exception fails the call and is
re-raised here with its own type and message; a collective that waits longer than ``timeout_s`` (a hang) is an error.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.strategies import DDPStrategy
from torch.multiprocessing.spawn import ProcessException

from lightning_regs.batch import BAG_ID, IMAGE, INDEX
from lightning_regs.tasks import ImageClassifier, LocalLearningClassifier
from tests.faults._tasks_helpers import batches, loader
from tests.helpers.ddp import _leave_without_finalization, find_free_port
from tests.helpers.trainers import QUIET

WORLD = 2
NAN = math.nan


def _worker(rank: int, fn: Callable[..., Any], port: int, out_dir: str, timeout_s: float, args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
        NODE_RANK="0",
    )  # fmt: skip
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=timeout_s))
    try:
        result = fn(rank, WORLD, *args)
    except BaseException as error:
        with contextlib.suppress(Exception):  # an exception that does not pickle: torch's traceback text is left
            partial = Path(out_dir) / f"error{rank}.part"  # whole or absent: the join may end this rank at any time
            torch.save((time.time(), error), partial)
            partial.rename(partial.with_suffix(".pt"))
        raise  # without leaving: the other rank may wait in a collective until the join ends it
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    _leave_without_finalization()


def spawn(fn: Callable[..., Any], *args: Any, timeout_s: float = 60) -> list[Any]:
    """``fn(rank, world_size, *args)`` on each of 2 ranks; the results by rank.

    If a rank raises, the first exception raised (by time) is re-raised here, chained from torch's
    ``ProcessRaisedException``; the other rank is ended by the join, so a rank left waiting is not a hang.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        try:
            mp.start_processes(
                _worker, args=(fn, find_free_port(), out_dir, timeout_s, args), nprocs=WORLD, join=True,
                start_method="spawn",
            )  # fmt: skip
        except ProcessException as failure:
            raised = [torch.load(path, weights_only=False) for path in Path(out_dir).glob("error*.pt")]
            if raised:
                raise min(raised, key=lambda item: item[0])[1] from failure
            raise
        return [torch.load(Path(out_dir) / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


def caught(call: Callable[[], Any]) -> Any:
    """``call()``, or the exception it raised (for faults that every rank raises at the same point)."""
    try:
        return call()
    except Exception as error:  # handed to the test, which asserts its type and words
        return error


def reraise(result: Any) -> None:
    """Raise ``result`` if it is an exception (inside ``pytest.raises``), else nothing (and the test fails)."""
    if isinstance(result, BaseException):
        raise result


def ddp_trainer(find_unused: bool = False, **kwargs: Any) -> Trainer:
    """A Trainer that joins the running process group (inside :func:`spawn`)."""
    settings = {**QUIET, "max_epochs": 1, **kwargs}
    strategy = DDPStrategy(find_unused_parameters=find_unused)
    return Trainer(accelerator="cpu", devices=WORLD, strategy=strategy, **settings)


def fit(task, train: list, val: list | None = None, **kwargs: Any) -> tuple[Trainer, list[str]]:
    """One epoch over this rank's own ``train`` (and ``val``) batches; the trainer and the warnings' messages."""
    kwargs.setdefault("find_unused", isinstance(task, LocalLearningClassifier))  # local learning needs it
    trainer = ddp_trainer(use_distributed_sampler=False, **kwargs)
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        trainer.fit(task, loader(train), loader(val) if val is not None else None)
    return trainer, [str(w.message) for w in caught_warnings]


def metrics(trainer: Trainer, prefix: str = "") -> dict[str, float]:
    return {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith(prefix)}


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def rank_batches(kind: str, stage: str, rank: int, n: int = 3) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of the tasks' fault helpers, other on each rank (inputs shifted, indices and bags distinct)."""
    out = []
    for batch in batches(kind, stage, n):
        batch = {**batch, IMAGE: batch[IMAGE] + 0.1 * rank, INDEX: batch[INDEX] + 1000 * rank}
        if BAG_ID in batch:
            batch[BAG_ID] = batch[BAG_ID] + 1000 * rank
        out.append(batch)
    return out


def keep_rows(batch: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
    return {key: value[rows] for key, value in batch.items()}


def all_nan(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**batch, IMAGE: torch.full_like(batch[IMAGE], NAN)}


class NaNWeightsOnRank(Callback):
    """Turns every weight of ``rank`` NaN before step 0's batch (a replica that diverged); :class:`RestoreWeights`,
    placed after the monitor, puts them back so that training goes on."""

    def __init__(self, rank: int) -> None:
        self.rank, self.saved = rank, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0 and trainer.global_rank == self.rank:
            self.saved = state(pl_module)
            with torch.no_grad():
                for parameter in pl_module.parameters():
                    parameter.fill_(NAN)


class RestoreWeights(Callback):
    def __init__(self, spoiler: NaNWeightsOnRank) -> None:
        self.spoiler = spoiler

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.spoiler.saved is not None:
            pl_module.load_state_dict(self.spoiler.saved)
            self.spoiler.saved = None


class NaNLogitsOnRank(ImageClassifier):
    """Returns NaN logits for rows 0 and 1 of training batch 1 on rank ``rank`` (the loss stays finite); the indices of
    those rows are kept in ``nan_index``."""

    def __init__(self, *args: Any, rank: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nan_rank, self.nan_index = rank, []

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        if self.global_rank == self.nan_rank and batch_idx == 1:
            logits = out["logits"].clone()
            logits[:2] = NAN
            self.nan_index = batch[INDEX][:2].tolist()
            out = {**out, "logits": logits}
        return out
