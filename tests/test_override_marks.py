"""Every method that overrides a base-class method carries ``@override`` (docs/design.md, house style).

The walk imports every module of ``lightning_regs``, takes every class defined there and, for each method it
defines, asks whether a class later in the method resolution order (a Lightning, torch or torchmetrics class, or one
of the project's own bases) defines the same name. A mixin's method counts when it overrides in a class that mixes it
in (``AnomalyEvaluationSteps.validation_step`` over ``LightningModule.validation_step``). Dunder methods are left out.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import lightning_regs

BASE_ROOTS = ("lightning", "torch", "torchmetrics", "lightning_regs")


def _modules() -> list[ModuleType]:
    names = [info.name for info in pkgutil.walk_packages(lightning_regs.__path__, "lightning_regs.")]
    return [lightning_regs, *(importlib.import_module(name) for name in sorted(names))]


def _own_classes() -> list[type]:
    found: dict[str, type] = {}
    for module in _modules():
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__:
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[key] for key in sorted(found)]


def _function(attribute: object) -> object | None:
    if isinstance(attribute, (staticmethod, classmethod)):
        return attribute.__func__
    if isinstance(attribute, property):
        return attribute.fget
    return attribute if inspect.isfunction(attribute) else None


def _is_base(cls: type) -> bool:
    return cls.__module__.split(".")[0] in BASE_ROOTS


def _package(module: str) -> str:
    """``callbacks`` for ``lightning_regs.callbacks.pskd``; ``""`` for a top-level module (``lightning_regs.cli``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else ""


def _unmarked(classes: list[type], package: str | None = None) -> list[str]:
    """``module.Class.method (overrides base.Class)`` for every overriding method without the mark.

    With ``package``, only methods defined in that subpackage (``""``: the top-level modules).
    """
    missing: set[str] = set()
    for cls in classes:
        mro = cls.__mro__
        for position, definer in enumerate(mro):
            if not definer.__module__.startswith("lightning_regs."):
                continue
            if package is not None and _package(definer.__module__) != package:
                continue
            for name, attribute in vars(definer).items():
                if name.startswith("__") and name.endswith("__"):
                    continue
                function = _function(attribute)
                if function is None or getattr(function, "__override__", False):
                    continue
                if next(c for c in mro if name in vars(c)) is not definer:
                    continue  # a subclass overrides it in turn: the subclass's method is checked instead
                overridden = next((b for b in mro[position + 1 :] if name in vars(b) and _is_base(b)), None)
                if overridden is not None:
                    missing.add(
                        f"{definer.__module__}.{definer.__qualname__}.{name} "
                        f"(overrides {overridden.__module__}.{overridden.__qualname__})"
                    )
    return sorted(missing)


def test_the_walk_sees_the_package():
    classes = _own_classes()
    names = {cls.__qualname__ for cls in classes}
    assert {"ImageClassifier", "ScheduledMonitor", "DigitsDataModule", "LossTerm"} <= names


def test_the_walk_finds_an_unmarked_override():
    from lightning.pytorch import Callback

    class Unmarked(Callback):
        def on_fit_start(self, trainer, pl_module):  # no @override, on purpose
            pass

    Unmarked.__module__ = "lightning_regs.callbacks.example"
    assert _unmarked([Unmarked]) == [
        "lightning_regs.callbacks.example.test_the_walk_finds_an_unmarked_override.<locals>.Unmarked.on_fit_start "
        "(overrides lightning.pytorch.callbacks.callback.Callback)"
    ]


@pytest.mark.parametrize(
    "package",
    ["callbacks", "datamodules", "functional", "local_learning", "models", "tasks", pytest.param("", id="top_level")],
)
def test_every_override_is_marked(package):
    missing = _unmarked(_own_classes(), package)
    assert not missing, "add @override (typing_extensions) to:\n" + "\n".join(missing)
