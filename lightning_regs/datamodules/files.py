"""Reading what a file list names, safely: every path stays inside the data root, every JSON file names itself.

A file list (a CSV, ``images.txt``) is data, and data can be wrong or hostile: an entry such as
``../../../../etc/passwd``, an absolute path, or a symlink inside the root that leads out of it would
make a DataModule read (and hash, and decode) a file the user never meant to hand over.
:func:`inside_root` resolves symlinks first and then checks containment, and its error names the
file list, the row and the entry. :class:`RootGuard` does the same for many entries, resolving each
folder once (RadImageNet lists 1.35M files in a few hundred folders).

Example::

    >>> import tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> inside_root("scans/a.png", root, "list.csv, line 2") == (root / "scans" / "a.png").resolve()
    True
    >>> inside_root("../../etc/passwd", root, "list.csv, line 3")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: list.csv, line 3: the entry '../../etc/passwd' leads outside the data root ...
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["RootGuard", "inside_root", "read_json"]


class RootGuard:
    """Resolve entries of a file list against ``root`` and refuse any that lead outside it.

    The root is resolved once (it may itself be a symlink, e.g. to a data disk); each entry's folder
    is resolved once per guard, and the entry itself only when it is a symlink, so checking a
    million entries costs about one ``lstat`` each.

    Args:
        root: the folder every entry must stay inside (after symlinks are resolved).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.real_root = os.path.realpath(self.root)
        self._folders: dict[str, str] = {}

    def __call__(self, entry: str | os.PathLike, source: str) -> Path:
        """``entry`` (relative to the root, or absolute) resolved, when inside the root.

        Args:
            entry: the path as the file list wrote it.
            source: where it was read, for the error (e.g. ``"RadiologyAI_train.csv, line 7"``).

        Raises:
            ValueError: the entry, once symlinks are resolved, lies outside the root.
        """
        path = os.path.join(self.root, entry)  # an absolute entry replaces the root, as it would when opened
        real = self._resolve(path)
        if real != self.real_root and not real.startswith(self.real_root.rstrip(os.sep) + os.sep):
            raise ValueError(
                f"{source}: the entry {os.fspath(entry)!r} leads outside the data root {self.root} (it resolves to "
                f"{real}). Entries must name files under the root, relative to it; fix or remove the entry. A "
                "symlink inside the root that points out of it is refused too: make the root itself the link, or "
                "copy the files in."
            )
        return Path(real)

    def _resolve(self, path: str) -> str:
        folder, name = os.path.split(path)
        if name in ("", ".", ".."):
            return os.path.realpath(path)
        real_folder = self._folders.get(folder)
        if real_folder is None:
            real_folder = self._folders[folder] = os.path.realpath(folder)
        joined = os.path.join(real_folder, name)
        return os.path.realpath(joined) if os.path.islink(joined) else joined


def inside_root(path: str | os.PathLike, root: str | os.PathLike, source: str) -> Path:
    """``root / path`` with symlinks resolved, when it stays inside ``root``; else a ``ValueError`` naming ``source``.

    One-off form of :class:`RootGuard` (use a guard for many entries under the same root).
    """
    return RootGuard(root)(path, source)


def read_json(path: str | os.PathLike, fix: str) -> Any:
    """Parse the JSON file at ``path``; invalid JSON is a ``ValueError`` naming the file, the position and ``fix``."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}). {fix}"
        ) from None
