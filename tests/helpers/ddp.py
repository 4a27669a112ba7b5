"""Run a function in N CPU processes joined by a gloo process group, and collect what each returns."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["DDP_SPAWN_CPU", "find_free_port", "run_in_ddp"]

# Trainer arguments for a 2-process DDP run on CPU, as the tests use everywhere.
DDP_SPAWN_CPU: dict[str, Any] = {"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"}


def find_free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, fn: Callable[..., Any], world_size: int, port: int, out_dir: str, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    # DTensors (FSDP2 meshes) keep gloo sub-groups alive until interpreter finalization, where their worker
    # threads can abort the process ("terminate called without an active exception", seen once in CI after
    # the result was written). The result is on disk: leave without finalization.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_in_ddp(fn: Callable[..., Any], *args: Any, world_size: int = 2) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes; return results by rank.

    ``fn`` must be a module-level function (spawned processes import it by name), and its result
    must be something ``torch.save`` can write. An exception in any rank fails the call.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _worker,
            args=(fn, world_size, find_free_port(), out_dir, args),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
        return [torch.load(Path(out_dir) / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]
