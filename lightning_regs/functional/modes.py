"""Run a module in eval mode for a while, then give every submodule back its own training flag."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["eval_mode"]


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
