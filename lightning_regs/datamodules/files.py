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
    lightning_regs.datamodules.files.OutsideRootError: list.csv, line 3: the entry '../../etc/passwd' leads outside ...
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

__all__ = ["OutsideRootError", "RootGuard", "UnreadableImageError", "inside_root", "open_image", "read_json"]


class OutsideRootError(ValueError):
    """A path named by a file list, or found by scanning a folder, resolves (by a symlink) outside the data root."""


class UnreadableImageError(OSError):
    """An image file cannot be decoded (truncated, damaged, not an image); the message names the file."""


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
            OutsideRootError: (a ``ValueError``) the entry, once symlinks are resolved, lies outside the root.
        """
        path = os.path.join(self.root, entry)  # an absolute entry replaces the root, as it would when opened
        real = self._resolve(path)
        if not self._inside(real):
            raise OutsideRootError(
                f"{source}: the entry {os.fspath(entry)!r} leads outside the data root {self.root} (it resolves to "
                f"{real}). Entries must name files under the root, relative to it; fix or remove the entry. A "
                "symlink inside the root that points out of it is refused too: make the root itself the link, or "
                "copy the files in."
            )
        return Path(real)

    def contain(self, path: str | os.PathLike, what: str) -> Path:
        """``path`` (found by scanning a folder under the root) resolved, when it stays inside the root.

        Args:
            path: a path under the root, as a folder scan found it (a symlink is followed).
            what: what the path is, for the error (e.g. ``"MVTec AD test image"``).

        Raises:
            OutsideRootError: (a ``ValueError``) the path, once symlinks are resolved, lies outside the root.
        """
        real = self._resolve(os.fspath(path))
        if not self._inside(real):
            raise OutsideRootError(
                f"{what} {os.fspath(path)} leads outside the data root {self.root} (it resolves to {real}): a "
                "symlink inside the root that points out of it is refused, so that no file outside the root is "
                "read. Make the root itself the link, or copy the files in."
            )
        return Path(real)

    def _inside(self, real: str) -> bool:
        return real == self.real_root or real.startswith(self.real_root.rstrip(os.sep) + os.sep)

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


def open_image(path: str | os.PathLike, mode: str | None = None) -> Any:
    """The image file at ``path``, fully decoded (a PIL image, converted to ``mode`` when given).

    Raises:
        UnreadableImageError: (an ``OSError``) the file is truncated, damaged or not an image; names ``path``.
    """
    from PIL import Image  # here, so that reading file lists does not import PIL

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode) if mode is not None else image.copy()
    except Image.DecompressionBombError as error:
        raise UnreadableImageError(
            f"{os.fspath(path)} is refused as a possible decompression bomb ({error}). If the image is genuine, "
            "raise PIL.Image.MAX_IMAGE_PIXELS."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, zlib.error, struct.error) as error:
        # PIL raises OSError for truncated data, SyntaxError for broken PNG chunks, and the rest from its decoders
        raise UnreadableImageError(
            f"{os.fspath(path)} cannot be decoded as an image ({type(error).__name__}: {error}): the file is "
            "truncated, damaged or not an image. Replace it with a good copy (extract the data set again), or remove "
            "it from the data set."
        ) from error


def read_json(path: str | os.PathLike, fix: str) -> Any:
    """Parse the JSON file at ``path``; invalid JSON is a ``ValueError`` naming the file, the position and ``fix``."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}). {fix}"
        ) from None
