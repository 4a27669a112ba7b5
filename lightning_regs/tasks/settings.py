"""A task's settings read from its own arguments, not from ``hparams``.

Under LightningCLI ``hparams`` hold the config of the class named on the command line: a user's subclass with
its own signature (``MyClassifier(width, lr)``) would leave the base task's settings out of them.

Example::

    >>> class Task:
    ...     def __init__(self, backbone, lr: float = 0.1, momentum: float = 0.9):
    ...         self.task_settings = own_settings(Task.__init__, locals(), exclude=("backbone",))
    >>> dict(Task(None, lr=0.5).task_settings)
    {'lr': 0.5, 'momentum': 0.9}
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lightning.pytorch.utilities import AttributeDict

__all__ = ["own_settings"]


def own_settings(init: Callable[..., Any], values: Mapping[str, Any], exclude: Iterable[str] = ()) -> AttributeDict:
    """The arguments of ``init`` (its ``locals()`` as ``values``) but ``self`` and ``exclude``, by name."""
    skipped = {"self", *exclude}
    return AttributeDict({name: values[name] for name in inspect.signature(init).parameters if name not in skipped})
