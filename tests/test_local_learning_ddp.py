"""Local learning with MAN under 2-process DDP: one all-reduce per optimizer step."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from lightning_regs.models import MLP
from lightning_regs.tasks.local_learning_classifier import LocalLearningClassifier
from tests.helpers.ddp import spawn_ddp
from tests.helpers.trainers import QUIET, SequentialDigits

ALLREDUCE_CALLS = [0]


def counting_allreduce(state, bucket):
    """DDP comm hook: the default all-reduce, counted (module level so that ddp_spawn can pickle it)."""
    ALLREDUCE_CALLS[0] += 1
    return default_hooks.allreduce_hook(state, bucket)


class SaveState(Callback):
    """Counts the gradient all-reduces (Lightning registers comm hooks on CUDA only) and saves the state."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_start(self, trainer, pl_module):
        if trainer.world_size > 1:
            trainer.strategy.model.register_comm_hook(state=None, hook=counting_allreduce)

    def on_train_end(self, trainer, pl_module):
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        state["allreduce_calls"] = torch.tensor(ALLREDUCE_CALLS[0])
        torch.save(state, Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


def fit(per_rank_batch: int, out_dir: Path, **trainer_kwargs) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(0)
    backbone = MLP(in_features=64, num_classes=10, width=32, depth=4)
    # No BatchNorm in the heads: per-rank batch statistics would differ from the global batch's.
    task = LocalLearningClassifier(
        backbone, 10, K=3, split=[0, 1], head="dgl", man=True, man_momentum=0.5, input_shape=(1, 8, 8), head_norm=False,
        lr=0.1, scheduler="constant",
    )  # fmt: skip
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=5,
        limit_val_batches=0,
        use_distributed_sampler=False,
        default_root_dir=out_dir,
        callbacks=[SaveState(str(out_dir))],
        **QUIET,
        **trainer_kwargs,
    )
    trainer.fit(task, SequentialDigits(batch_size=per_rank_batch))


def test_ddp_all_reduces_once_per_optimizer_step_not_once_per_module(tmp_path):
    # That 2 ranks equal one process (parameters and EMA) is the method harness's test (local_learning_man).
    strategy = spawn_ddp(find_unused_parameters=True)
    fit(8, tmp_path / "ddp", accelerator="cpu", devices=2, strategy=strategy)
    rank0 = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "ddp" / "rank1.pt", weights_only=True)
    ema_key = next(k for k in rank0 if k.endswith("ema.0.weight"))
    assert not torch.equal(rank0[ema_key], rank0["backbone.layers.fc2.0.weight"])  # the EMA lags the block
    # One all-reduce per optimizer step (5 steps, one gradient bucket), not one per module backward (K=3).
    assert int(rank0.pop("allreduce_calls")) == int(rank1.pop("allreduce_calls")) == 5
