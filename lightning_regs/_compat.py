"""Every access to a private name of Lightning or torch, in one place.

An out-of-tree library that reads a framework's internals breaks silently when a release moves them. Each accessor
here names what it reads and why no public route serves; ``tests/test_compat.py`` checks each assumption on the
installed versions (:data:`CHECKED_ON` names the ones it was written against) and fails loudly, naming the
accessor, when one breaks; ``tests/test_compat.py::test_no_module_outside_compat_reads_a_private_name`` keeps the
rest of the library off these names.

Example::

    >>> from torch import nn
    >>> attached_trainer(nn.Module()) is None
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

__all__ = [
    "CHECKED_ON",
    "COMPILED_WRAPPER_ATTRIBUTE",
    "NormBase",
    "attached_trainer",
    "batches_processed_in_epoch",
    "compiled_original",
    "fit_train_loaders",
    "fsdp_lazy_init",
    "is_compiled",
    "lightning_original_forward",
    "set_callback_metric",
    "set_up_val_loaders",
    "storage_base",
]

#: The releases each assumption below was checked on (by ``tests/test_compat.py``).
CHECKED_ON = {"lightning": "2.6.6", "torch": "2.14.1"}

#: Where ``torch.compile``'s wrapper keeps the module it wraps (a submodule path through a compiled module names it).
COMPILED_WRAPPER_ATTRIBUTE = "_orig_mod"

#: BatchNorm*, SyncBatchNorm and InstanceNorm*'s common base (torch has no public one).
NormBase: type[nn.Module] = _NormBase


def attached_trainer(module: nn.Module) -> Any:
    """The Trainer a LightningModule is attached to, or ``None`` (``module.trainer`` raises when detached)."""
    return getattr(module, "_trainer", None)


def fit_train_loaders(trainer: Any) -> Any:
    """The training loaders ``fit`` was given (or the module's ``train_dataloader()``); ``None`` when there are none.

    Lightning loads them lazily after ``LightningModule.setup``; a module sizing itself in ``setup`` reads them from
    the fit loop's data source (``trainer.train_dataloader`` is still ``None`` there).
    """
    source = trainer.fit_loop._data_source
    return source.dataloader() if source.is_defined() else None


def batches_processed_in_epoch(trainer: Any) -> int:
    """Batches this rank has trained on in the current epoch (prefetched ones not counted), from Lightning's counter."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)


def set_up_val_loaders(trainer: Any) -> None:
    """Make Lightning load the validation loaders now (it does so lazily, at the first validation)."""
    trainer.fit_loop.epoch_loop.val_loop.setup_data()


def set_callback_metric(trainer: Any, name: str, value: float) -> None:
    """Make ``name`` visible to callbacks that read ``trainer.callback_metrics`` (ModelCheckpoint, EarlyStopping).

    A callback's measurement, logged through the loggers directly, is not a ``LightningModule.log`` result; the
    dict ``callback_metrics`` returns is the logger connector's own, so an entry written into it is seen.
    """
    trainer.callback_metrics[name] = torch.tensor(value)


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` is the wrapper ``torch.compile`` returns for a module."""
    return isinstance(module, torch._dynamo.OptimizedModule)


def compiled_original(module: nn.Module) -> nn.Module:
    """The module ``torch.compile`` wrapped (``module`` itself when it is not compiled)."""
    return getattr(module, COMPILED_WRAPPER_ATTRIBUTE) if is_compiled(module) else module


def lightning_original_forward(module: nn.Module) -> Any:
    """The eager ``forward`` of a LightningModule compiled through ``Trainer.fit(torch.compile(model))``, or None."""
    context = getattr(module, "_compiler_ctx", None)  # set by Lightning's from_compiled
    return context.get("original_forward") if isinstance(context, dict) else None


def fsdp_lazy_init(root: nn.Module) -> None:
    """Run FSDP2's lazy root initialization of ``root`` (a no-op once done; FSDP2 has no public equivalent)."""
    from torch.distributed.fsdp import fully_shard

    fully_shard.state(root)._lazy_init()


def storage_base(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor ``tensor`` is a view of, or ``tensor`` itself (what autograd saved, seen through views)."""
    return tensor._base if tensor._base is not None else tensor
