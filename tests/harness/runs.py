"""Runs of a registry setting: uninterrupted, stopped and resumed, on one process or two (ddp_spawn).

Each run returns (or, under DDP, each rank writes) the final state: the module's ``state_dict`` and
the ``state_dict`` of every callback of the package, by ``state_key``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.harness.registry import MethodSetting
from tests.helpers.trainers import QUIET, CrashAtEpoch, CrashAtStep

__all__ = [
    "DDP_BATCH",
    "SINGLE_BATCH",
    "final_state",
    "fit_setting",
    "initial_state",
    "run_ddp",
    "run_resumed",
    "run_resumed_mid_epoch",
    "run_uninterrupted",
]

DDP_BATCH = 16  # per rank, on two ranks
SINGLE_BATCH = 2 * DDP_BATCH  # the same global batch on one process


def final_state(trainer: Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    """The module's weights and buffers, its extra states and the package's callbacks' states, detached on the CPU.

    Extra states (``get_extra_state``, e.g. a frozen encoder's source and weights digest) are compared as they are.
    """
    ours = [c for c in trainer.callbacks if type(c).__module__.startswith("lightning_regs")]
    callbacks = {c.state_key: _to_cpu(c.state_dict()) for c in ours}
    state = pl_module.state_dict()
    weights = {k: v.detach().cpu().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    extra = {k: _to_cpu(v) for k, v in state.items() if not isinstance(v, torch.Tensor)}
    return {"weights": weights, "callbacks": callbacks, **({"extra": extra} if extra else {})}


def initial_state(entry: MethodSetting) -> dict[str, torch.Tensor]:
    """The entry's task state before training (seed 0, as every run builds it)."""
    seed_everything(0)
    state = entry.make_task().state_dict()
    return {k: v.detach().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}


class SaveFinalState(Callback):
    """Each rank writes :func:`final_state` to ``<out_dir>/rank<r>.pt`` at the end of fit."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer: Trainer, pl_module: pl.LightningModule) -> None:
        torch.save(final_state(trainer, pl_module), Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


def fit_setting(
    entry: MethodSetting,
    root: Path,
    *,
    per_rank_batch: int = SINGLE_BATCH,
    crash_at_epoch: int | None = None,
    crash_at_step: int | None = None,
    every_n_train_steps: int | None = None,
    ckpt_path: Path | None = None,
    **trainer_kwargs: Any,
) -> dict[str, Any]:
    """Fit ``entry`` from seed 0, checkpointing in ``root`` (each epoch end, or every N steps); rank 0's final state."""
    root.mkdir(parents=True, exist_ok=True)
    seed_everything(0)
    task = entry.make_task()
    extra: list[Callback] = [CrashAtEpoch(crash_at_epoch)] if crash_at_epoch is not None else []
    if crash_at_step is not None:
        extra.append(CrashAtStep(crash_at_step))
    trainer = Trainer(
        max_epochs=entry.max_epochs,
        limit_train_batches=entry.limit_train_batches,
        limit_val_batches=1,
        use_distributed_sampler=False,
        default_root_dir=root,
        callbacks=[
            *entry.make_callbacks(),
            ModelCheckpoint(dirpath=root, save_last=True, save_top_k=-1, every_n_train_steps=every_n_train_steps),
            SaveFinalState(str(root)),
            *extra,
        ],
        **{**QUIET, "enable_checkpointing": True},
        **trainer_kwargs,
    )
    trainer.fit(task, entry.datamodule(root, per_rank_batch), ckpt_path=ckpt_path)
    return torch.load(root / "rank0.pt", weights_only=True)


def run_uninterrupted(entry: MethodSetting, root: Path) -> dict[str, Any]:
    return fit_setting(entry, root, accelerator="cpu", devices=1)


def run_resumed(entry: MethodSetting, root: Path, stop_at_epoch: int = 1) -> dict[str, Any]:
    """Crash at the start of ``stop_at_epoch``, then resume from ``last.ckpt`` with fresh objects."""
    try:
        fit_setting(entry, root, crash_at_epoch=stop_at_epoch, accelerator="cpu", devices=1)
    except RuntimeError as error:
        if "CRASH" not in str(error):
            raise
    else:
        raise AssertionError("the run was meant to crash")
    return fit_setting(entry, root, ckpt_path=root / "last.ckpt", accelerator="cpu", devices=1)


def run_resumed_mid_epoch(
    entry: MethodSetting, root: Path, every_n_train_steps: int, crash_at_step: int, **trainer_kwargs: Any
) -> dict[str, Any]:
    """Checkpoint every N optimizer steps, crash before step ``crash_at_step + 1``, resume from ``last.ckpt``.

    With ``limit_train_batches=4``, step 5 is batch 1 of epoch 1: the last checkpoint was written in the middle of
    an epoch, and the resumed run must start after the batches it had trained on.
    """
    try:
        fit_setting(entry, root, crash_at_step=crash_at_step, every_n_train_steps=every_n_train_steps, **trainer_kwargs)
    except Exception as error:  # under ddp_spawn the worker's RuntimeError arrives as a ProcessRaisedException
        if "CRASH" not in str(error):
            raise
    else:
        raise AssertionError("the run was meant to crash")
    return fit_setting(
        entry, root, ckpt_path=root / "last.ckpt", every_n_train_steps=every_n_train_steps, **trainer_kwargs
    )


def run_ddp(entry: MethodSetting, root: Path) -> list[dict[str, Any]]:
    """The final state of each of two ``ddp_spawn`` ranks, each seeing half of every global batch."""
    fit_setting(entry, root, per_rank_batch=DDP_BATCH, accelerator="cpu", devices=2, strategy=entry.strategy())
    return [torch.load(root / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value
