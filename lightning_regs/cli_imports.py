"""Class paths on a command line, checked before LightningCLI parses it: one clear line instead of a usage dump.

``lightning-regs fit --model mymodule.MyClassifier`` imports ``mymodule`` from the current directory, as
``python -m lightning_regs`` does (:func:`import_from_current_directory`). A class path that does not import
(given on the command line or as a ``class_path:`` in a ``--config`` file) is reported by
:func:`class_path_problem` as one sentence naming the path, the error and the fix.

Example::

    >>> class_path_problem(["fit", "--model", "lightning_regs.tasks.ImageClassifier"]) is None
    True
    >>> print(class_path_problem(["fit", "--model=no_such_module.MyClassifier"]))  # doctest: +ELLIPSIS
    Cannot import no_such_module.MyClassifier (given to --model): No module named 'no_such_module'. ...
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["class_path_problem", "import_from_current_directory"]

# A dotted path whose last part is a class name (``pkg.module.ClassName``); file names (``last.ckpt``) are not.
_CLASS_PATH = re.compile(r"^(?:[A-Za-z_]\w*\.)+[A-Z]\w*$")
_CONFIG_FLAGS = ("--config", "-c")
# Flags whose bare class name LightningCLI resolves among the imported subclasses of a base: (module, class).
_SHORT_NAME_BASES = {
    "--model": ("lightning.pytorch", "LightningModule"),
    "--data": ("lightning.pytorch", "LightningDataModule"),
    "--trainer.callbacks": ("lightning.pytorch", "Callback"),
}


def import_from_current_directory() -> None:
    """Put the current directory first on ``sys.path``, as ``python -m`` does (a console script does not)."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def class_path_problem(args: Sequence[str]) -> str | None:
    """The first class path in ``args`` (or in their ``--config`` files) that fails to import, as one sentence.

    A bare class name given to ``--model``, ``--data`` or ``--trainer.callbacks`` that no imported class has (the
    module forgotten: ``--model MyClassifier``) is reported too, with the files of the current directory that
    define it.
    """
    for flag, path in _class_paths(args):
        problem = _import_problem(path)
        if problem is not None:
            return f"Cannot import {path} (given to {flag}): {problem}"
    for flag, name in _short_names(args):
        problem = _short_name_problem(flag, name)
        if problem is not None:
            return problem
    return None


def _short_names(args: Sequence[str]) -> Iterator[tuple[str, str]]:
    args = list(args)
    for position, arg in enumerate(args):
        flag, equals, value = arg.partition("=")
        if flag.rstrip("+") not in _SHORT_NAME_BASES:
            continue
        if not equals:
            value = args[position + 1] if position + 1 < len(args) else ""
        if re.match(r"^[A-Z]\w*$", value):
            yield flag, value


def _short_name_problem(flag: str, name: str) -> str | None:
    base = importlib.import_module(_SHORT_NAME_BASES[flag.rstrip("+")][0])
    base_class = getattr(base, _SHORT_NAME_BASES[flag.rstrip("+")][1])
    if name in {cls.__name__ for cls in _subclasses(base_class)}:
        return None
    defined_in = sorted(
        path.stem for path in Path.cwd().glob("*.py") if re.search(rf"^class {name}\b", _read(path), re.M)
    )
    hint = (
        f"; it is defined in {', '.join(p + '.py' for p in defined_in)}: give {flag} {defined_in[0]}.{name}"
        if defined_in
        else (f": give the full class path, {flag} your_module.{name}, from the folder that holds your_module.py")
    )
    return f"Cannot resolve {name} (given to {flag}): no imported {base_class.__name__} has that name{hint}."


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return ""


def _class_paths(args: Sequence[str]) -> Iterator[tuple[str, str]]:
    args = list(args)
    for position, arg in enumerate(args):
        if not arg.startswith("-"):
            continue
        flag, equals, value = arg.partition("=")
        if not equals:
            following = args[position + 1] if position + 1 < len(args) else ""
            value = "" if following.startswith("-") else following
        if flag in _CONFIG_FLAGS:
            yield from ((f"{flag} {value}", path) for path in _config_class_paths(value))
        elif _CLASS_PATH.match(value):
            yield flag, value


def _config_class_paths(config: str) -> Iterator[str]:
    """The ``class_path`` values of a YAML config file; nothing when it cannot be read (LightningCLI says why)."""
    try:
        import yaml

        tree = yaml.safe_load(Path(config).read_text())
    except Exception:  # not a file, or not YAML: the parser's own error is the clear one
        return
    yield from (path for path in _walk(tree) if _CLASS_PATH.match(path))


def _walk(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "class_path" and isinstance(value, str):
                yield value
            else:
                yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _import_problem(path: str) -> str | None:
    module_name, _, name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.split(".")[0] == error.name.split(".")[0]:
            top = module_name.split(".")[0]
            return (
                f"{error}. Run the command from the folder that holds {top}.py (or {top}/), add that folder to "
                f"PYTHONPATH, or install the package that provides it."
            )
        return f"importing {module_name} failed: {error}{_where(error)}. Install what it needs."
    except Exception as error:  # the user's module itself raised while being imported
        return f"importing {module_name} raised {type(error).__name__}: {error}{_where(error)}."
    if not hasattr(module, name):
        public = sorted(n for n, v in vars(module).items() if isinstance(v, type) and not n.startswith("_"))
        return f"{module_name} has no attribute {name!r}; its classes are {', '.join(public) or 'none'}."
    return None


def _where(error: BaseException) -> str:
    """`` (file.py, line N)`` of the innermost frame of ``error`` outside importlib."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "importlib" not in f.filename]
    return f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
