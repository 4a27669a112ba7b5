"""Run a module in eval mode, or without ``torch.compile``, for a while; then give it back as it was."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from lightning_regs._compat import compiled_original, is_compiled, lightning_original_forward

__all__ = ["eval_mode", "side_effect_free", "uncompiled", "unwrap_compiled"]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` (and all its submodules) in eval mode inside the ``with`` block.

    On exit, normal or by an exception, each submodule gets back the ``training`` flag it had on entry.
    This differs from ``module.train(was_training)``, which would set one flag on the whole tree: a model
    with mixed modes (e.g. a frozen BatchNorm kept in eval inside a training network) keeps them. Flags are
    written directly, so a submodule's overridden ``train()`` is not called again on exit.

    Args:
        module: the module to evaluate.

    Yields:
        ``module``, in eval mode.

    Example::

        >>> import torch
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> _ = net[1].eval()  # a frozen BN in a training net
        >>> with eval_mode(net):
        ...     [m.training for m in net.modules()]
        [False, False, False]
        >>> [m.training for m in net.modules()]
        [True, True, False]
    """
    flags = [(sub, sub.training) for sub in module.modules()]
    try:
        module.eval()
        yield module
    finally:
        for sub, training in flags:
            sub.training = training


@contextmanager
def side_effect_free(module: nn.Module) -> Iterator[nn.Module]:
    """Run extra forwards of ``module`` in its current mode without changing its buffers or the global RNG.

    Buffers (BatchNorm's running statistics and counters) are copied on entry and written back on exit, and the
    CPU and current CUDA generators are forked, so dropout draws nothing training would have drawn. Use it for a
    prediction the training loop did not ask for (PS-KD's forward on the unmixed images under MixUp).

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> before = net[1].running_mean.clone()
        >>> with side_effect_free(net), torch.no_grad():
        ...     _ = net(torch.randn(4, 2) + 5)
        >>> torch.equal(net[1].running_mean, before)
        True
    """
    saved = [(buffer, buffer.detach().clone()) for buffer in module.buffers()]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield module
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def unwrap_compiled(module: nn.Module) -> nn.Module:
    """The module ``torch.compile`` wrapped (through every level), or ``module`` itself when it is not compiled.

    Example::

        >>> net = nn.Linear(2, 2)
        >>> unwrap_compiled(net) is net
        True
    """
    while is_compiled(module):
        module = compiled_original(module)
    return module


@contextmanager
def uncompiled(module: nn.Module) -> Iterator[nn.Module]:
    """Run ``module`` eagerly inside the ``with`` block: no ``torch.compile``\\ d part anywhere in its tree.

    Hooks (what monitors count with) do not fire inside a compiled graph, and compiling a measurement's
    extra forwards would cost a recompilation. Inside the block, every compiled submodule is replaced by
    the module it wraps and a LightningModule compiled through ``Trainer.fit(torch.compile(model))`` gets its
    original ``forward`` back; on exit everything is restored. Parameters are the same objects throughout.

    Yields:
        the eager module (``module`` unwrapped if it is itself compiled).

    Example::

        >>> import torch
        >>> net = nn.Sequential(torch.compile(nn.Linear(2, 2)))
        >>> with uncompiled(net) as eager:
        ...     type(eager[0]).__name__
        'Linear'
        >>> type(net[0]).__name__
        'OptimizedModule'
    """
    root = unwrap_compiled(module)
    swapped = []
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if unwrap_compiled(child) is not child:
                swapped.append((parent, name, child))
                setattr(parent, name, unwrap_compiled(child))
    original_forward = lightning_original_forward(root)
    forward = root.__dict__.get("forward")
    if original_forward is not None:
        root.forward = original_forward
    try:
        yield root
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
        if forward is not None:
            root.forward = forward
