"""DataModule options stored once, in ``hparams``: the :class:`hparam` attribute and its reader and writer."""

from __future__ import annotations

from typing import Any

__all__ = ["get_option", "hparam", "set_option"]

_REQUIRED = object()


class hparam:
    """A DataModule attribute stored once, in ``self.hparams[name]``: reads and writes go there.

    So ``dm.batch_size = 32`` (e.g. by Lightning's batch-size finder) is also what the checkpoint's
    hyper-parameters record. ``default`` is returned when the key is absent; without one a clear
    error says to save the argument.

    Example::

        >>> from lightning_regs.datamodules.base import SplitDataModule
        >>> class Data(SplitDataModule):
        ...     image_size = hparam()
        ...     def __init__(self, image_size: int = 8, batch_size: int = 4, seed: int = 0) -> None:
        ...         super().__init__()
        ...         self.save_hyperparameters()
        >>> data = Data()
        >>> data.image_size = 16
        >>> data.image_size, data.hparams.image_size, data.num_workers
        (16, 16, 0)
    """

    def __init__(self, default: Any = _REQUIRED) -> None:
        self.default = default
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        overrides = obj.__dict__.get("_hparam_overrides", {})
        if self.name in overrides:
            return overrides[self.name]
        if self.name in obj.hparams:
            return obj.hparams[self.name]
        if self.default is not _REQUIRED:
            return self.default
        raise AttributeError(
            f"{type(obj).__name__}.{self.name} reads self.hparams['{self.name}'], which is not set: give __init__ "
            f"a `{self.name}` argument and call self.save_hyperparameters() there."
        )

    def __set__(self, obj: Any, value: Any) -> None:
        set_option(obj, self.name, value)


def set_option(obj: Any, name: str, value: Any) -> None:
    """Write ``name`` to ``obj.hparams`` when ``__init__`` took it; else keep it on the instance.

    A key ``__init__`` does not take must not reach the checkpoint's hyper-parameters:
    ``load_from_checkpoint`` would pass it back as an unexpected argument.
    """
    if name in obj.hparams:
        obj.hparams[name] = value
    else:
        obj.__dict__.setdefault("_hparam_overrides", {})[name] = value


def get_option(obj: Any, name: str, default: Any = None) -> Any:
    """The value :func:`set_option` wrote, else ``obj.hparams[name]``, else ``default``."""
    overrides = obj.__dict__.get("_hparam_overrides", {})
    return overrides[name] if name in overrides else obj.hparams.get(name, default)
