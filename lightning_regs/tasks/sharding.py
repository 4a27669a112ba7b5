"""FSDP2 for the tasks: which modules become ``fully_shard`` units, applied once in ``configure_model``.

Under ``ModelParallelStrategy(data_parallel_size=W, tensor_parallel_size=1)``,
:class:`~lightning_regs.tasks.ImageClassifier` (and every task built on it) calls :func:`fully_shard_task`
from ``configure_model`` with the strategy's ``data_parallel`` mesh; no user code is needed::

    from lightning.pytorch import Trainer
    from lightning.pytorch.strategies import ModelParallelStrategy

    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=False)
    Trainer(accelerator="cpu", devices=2, strategy=strategy).fit(task, datamodule)

Each parameter becomes a :class:`~torch.distributed.tensor.DTensor` sharded along its first dimension
(``.full_tensor()`` gathers it); each unit gathers its parameters just before its forward and frees them
after, and reduce-scatters its gradients as soon as its backward is done. The units
(:func:`sharding_units`), children before parents:

* each entry of the backbone's layer sequence and its head (the layer-sequence contract of
  :mod:`lightning_regs.models.layered`; other backbones are one unit);
* with local learning, the entries of the local modules and each auxiliary head; a momentum auxiliary
  network's ``ema`` copy is a unit of its own, sharded exactly like the block it tracks, so
  :meth:`~lightning_regs.local_learning.man.MomentumAuxiliaryHead.update_ema` averages shard by shard;
* the LightningModule itself, the root (it holds whatever is left).

Each part declares its own units with a ``shard_units()`` method where it needs more than one
(:func:`declared_units`); a LightningModule's ``shard_units()`` names its parts beyond the backbone.

Buffers (BatchNorm statistics) are not sharded: each rank keeps its own, as under DDP.

Example::

    >>> import torch.distributed as dist
    >>> from torch.distributed.device_mesh import init_device_mesh
    >>> from lightning_regs.models import MLP
    >>> from lightning_regs.tasks import ImageClassifier
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)  # one process, to run it here
    >>> task = ImageClassifier(MLP(in_features=64, num_classes=10, width=16, depth=3), num_classes=10)
    >>> fully_shard_task(task, init_device_mesh("cpu", (1,)))
    ['backbone.layers.fc1', 'backbone.layers.fc2', 'backbone.head', '']
    >>> type(task.backbone.head.weight).__name__, tuple(task(torch.zeros(2, 1, 8, 8)).shape)
    ('DTensor', (2, 10))
    >>> dist.destroy_process_group()
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from lightning_regs._compat import attached_trainer, fsdp_lazy_init

__all__ = ["declared_units", "fully_shard_task", "shard_under_model_parallel", "sharding_units"]


def _layer_entries(model: nn.Module) -> list[nn.Module]:
    """The layer-sequence entries and the head of ``model``, or ``[model]`` when it has no layer sequence."""
    from lightning_regs.models.adapters import layered  # models import tasks' neighbours; keep imports lazy

    try:
        view = layered(model)
    except (TypeError, ValueError):
        return [model]
    return [*view.layers, view.head]


def declared_units(part: nn.Module) -> list[nn.Module]:
    """The units ``part`` declares with a ``shard_units()`` method (children first), else ``[part]``.

    A part that must be sharded in pieces says so itself: a momentum auxiliary head declares its ``ema`` copy as a
    unit of its own (:meth:`~lightning_regs.local_learning.man.MomentumAuxiliaryHead.shard_units`).

    Example::

        >>> from torch import nn
        >>> layer = nn.Linear(2, 2)
        >>> declared_units(layer) == [layer]
        True
    """
    declare = getattr(part, "shard_units", None)
    return list(declare()) if callable(declare) else [part]


def _candidates(pl_module: nn.Module) -> Iterator[nn.Module]:
    backbone = getattr(pl_module, "backbone", None)
    if isinstance(backbone, nn.Module):
        yield from _layer_entries(backbone)
    declare = getattr(pl_module, "shard_units", None)  # the module's own parts beyond its backbone (local learning)
    if callable(declare):
        yield from declare()


def sharding_units(pl_module: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the modules :func:`fully_shard_task` shards as units before the root, children first.

    A candidate that is not registered in ``pl_module`` (a grouping :func:`~lightning_regs.models.layered` made,
    such as a ResNet's ``stem``) is replaced by its registered parts; modules without parameters are left out.

    Example::

        >>> from lightning_regs.models import MLP
        >>> from lightning_regs.tasks import ImageClassifier
        >>> task = ImageClassifier(MLP(in_features=4, num_classes=2, width=8, depth=3), num_classes=2)
        >>> [name for name, _ in sharding_units(task)]
        ['backbone.layers.fc1', 'backbone.layers.fc2', 'backbone.head']
    """
    names = {id(module): name for name, module in pl_module.named_modules(remove_duplicate=False) if name}
    units: dict[int, tuple[str, nn.Module]] = {}

    def add(module: nn.Module) -> None:
        if next(module.parameters(), None) is None:
            return
        if id(module) in names:
            units.setdefault(id(module), (names[id(module)], module))
        else:
            for child in module.children():
                add(child)

    for candidate in _candidates(pl_module):
        add(candidate)
    # fully_shard must reach a child before its parent; deeper names first (stable: execution order otherwise).
    return sorted(units.values(), key=lambda unit: -unit[0].count("."))


def fully_shard_task(pl_module: nn.Module, mesh: DeviceMesh, **fully_shard_kwargs: Any) -> list[str]:
    """Apply FSDP2's ``fully_shard`` over ``mesh`` to each of :func:`sharding_units`, then to ``pl_module``.

    Idempotent: a module that is already sharded is left as it is. ``fully_shard_kwargs``
    (``reshard_after_forward``, ``mp_policy``, ...) go to every ``fully_shard`` call.

    Returns:
        the names of the units in the order they were sharded; ``""`` is the root.

    Raises:
        ValueError: ``mesh`` is not one-dimensional (give the strategy's ``device_mesh["data_parallel"]``).
    """
    if mesh.ndim != 1:
        raise ValueError(
            f"fully_shard_task shards over a 1-D data-parallel mesh; got a {mesh.ndim}-D mesh {mesh.mesh_dim_names}. "
            'Pass device_mesh["data_parallel"].'
        )
    units = sharding_units(pl_module)
    names = [name for name, _ in units] + [""]
    if isinstance(pl_module, FSDPModule):
        return names
    for _, module in units:
        fully_shard(module, mesh=mesh, **fully_shard_kwargs)
    fully_shard(pl_module, mesh=mesh, **fully_shard_kwargs)
    _root_first(pl_module, [module for _, module in units])
    return names


def _root_first(root: nn.Module, units: list[nn.Module]) -> None:
    """Make the first forward of any unit initialize ``root`` as FSDP's root first.

    FSDP2 decides which module is the root at the first forward: the first one to run. Local learning
    calls its modules one by one and a monitor may call the backbone alone, so without this a unit would
    become a root of its own and the LightningModule's next forward would fail. The lazy initialization
    cannot run in ``configure_model``: the parameters may still be on the meta device there.
    """
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def init_root(module: nn.Module, args: Any) -> None:
        fsdp_lazy_init(root)
        for handle in handles:
            handle.remove()

    # prepend: before the unit's own FSDP pre-forward hook (registered, also prepended, by fully_shard).
    handles.extend(unit.register_forward_pre_hook(init_root, prepend=True) for unit in units)


def shard_under_model_parallel(pl_module: pl.LightningModule) -> None:
    """A task's ``configure_model``: :func:`fully_shard_task` over the strategy's ``data_parallel`` mesh.

    Does nothing outside a Trainer or under any strategy but ``ModelParallelStrategy``; idempotent (the hook runs
    at every ``fit``/``validate``/``test``).

    Raises:
        ValueError: ``tensor_parallel_size > 1`` (the tasks shard with FSDP2 only).
    """
    from lightning.pytorch.strategies import ModelParallelStrategy

    if attached_trainer(pl_module) is None or not isinstance(pl_module.trainer.strategy, ModelParallelStrategy):
        return
    mesh = pl_module.device_mesh
    if mesh is None or "data_parallel" not in (mesh.mesh_dim_names or ()):
        raise RuntimeError("ModelParallelStrategy set no data-parallel device mesh on the module before sharding.")
    if mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            f"{type(pl_module).__name__} shards with FSDP2 only; ModelParallelStrategy(tensor_parallel_size="
            f"{mesh['tensor_parallel'].size()}) would replicate the work on every tensor-parallel rank. Use "
            "tensor_parallel_size=1 (and data_parallel_size=number of devices), or override configure_model."
        )
    fully_shard_task(pl_module, mesh["data_parallel"])
