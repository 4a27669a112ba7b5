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
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

__all__ = [
    "DDP_SPAWN",
    "DDP_SPAWN_CPU",
    "DDP_SPAWN_FIND_UNUSED",
    "ExitingSpawnDDPStrategy",
    "find_free_port",
    "run_in_ddp",
    "spawn_ddp",
]


def _leave_without_finalization() -> None:
    """Destroy every process group, flush, and exit this (worker) process at once.

    Gloo's threads that are still alive at interpreter finalization can abort a process ("terminate called without
    an active exception") after its work is done: DTensors (FSDP2 meshes) keep sub-groups alive, and Lightning 2.6
    never destroys the process group in a spawned DDP rank. That failed a test about once in every two clean-clone
    CI runs, a different ``ddp_spawn`` test each time. Whatever the worker had to hand back is sent by then.
    """
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class _ExitingLauncher(_MultiProcessingLauncher):
    """Lightning's spawn launcher, whose workers leave without finalization once they have handed back their result
    (it goes through a ``SimpleQueue``, written synchronously before ``put`` returns)."""

    def _wrapping_function(self, *args: Any, **kwargs: Any) -> None:
        super()._wrapping_function(*args, **kwargs)
        _leave_without_finalization()


class ExitingSpawnDDPStrategy(DDPStrategy):
    """``DDPStrategy(start_method="spawn")`` whose ranks exit cleanly (see :func:`_leave_without_finalization`).

    An exception in a rank still propagates as before; only a rank that finished is ended early.
    """

    def _configure_launcher(self) -> None:
        self._launcher = _ExitingLauncher(self, start_method="spawn")


def spawn_ddp(**kwargs: Any) -> ExitingSpawnDDPStrategy:
    """A fresh spawned-DDP strategy for one Trainer, e.g. ``spawn_ddp(find_unused_parameters=True)``."""
    return ExitingSpawnDDPStrategy(start_method="spawn", **kwargs)


# Registered names, so that the Trainer arguments below stay plain data (each Trainer builds its own strategy).
DDP_SPAWN = "ddp_spawn_exiting"
DDP_SPAWN_FIND_UNUSED = "ddp_spawn_exiting_find_unused_parameters_true"
for _name, _kwargs in ((DDP_SPAWN, {}), (DDP_SPAWN_FIND_UNUSED, {"find_unused_parameters": True})):
    if _name not in StrategyRegistry:
        StrategyRegistry.register(_name, ExitingSpawnDDPStrategy, start_method="spawn", **_kwargs)

# Trainer arguments for a 2-process DDP run on CPU, as the tests use everywhere.
DDP_SPAWN_CPU: dict[str, Any] = {"accelerator": "cpu", "devices": 2, "strategy": DDP_SPAWN}


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
    except BaseException:
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    _leave_without_finalization()  # the result is on disk


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
