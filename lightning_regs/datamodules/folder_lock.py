"""An advisory lock on a folder being written into, and the removal of what an interrupted writer left.

:func:`folder_lock` holds ``<folder>/.lightning_regs.lock`` (``fcntl.flock``) while a download or an extraction
writes into the folder, so a second process waits instead of racing; where the file system has no such lock
(Windows, some network mounts) there is none. :func:`remove_leftovers` deletes an interrupted run's files.

Example::

    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> with folder_lock(folder):
    ...     _ = (folder / "data.bin").write_bytes(b"written while holding the lock")
    >>> sorted(p.name for p in folder.iterdir())  # the lock file is gone
    ['data.bin']
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from lightning.pytorch.utilities import rank_zero_info

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]

__all__ = ["folder_lock", "remove_leftovers", "umask"]

_LOCK = ".lightning_regs.lock"


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lightning_regs.lock`` exclusively while writing into ``folder``; remove it when done.

    A process that finds the lock taken waits for it. The lock file is unlinked before it is
    unlocked, so a waiter that then gets the lock on the unlinked file sees that and takes the new one.
    """
    path = folder / _LOCK
    handle = _acquire(path) if fcntl is not None else None
    try:
        yield
    finally:
        if handle is not None:
            path.unlink(missing_ok=True)
            handle.close()


def _acquire(path: Path) -> IO[str] | None:
    """An open, exclusively locked ``path``; ``None`` where the file system allows no lock (read-only, no flock)."""
    while True:
        try:
            handle = open(path, "a")  # noqa: SIM115  (closed by folder_lock)
        except OSError:
            return None
        try:
            locked = _lock(handle, path)
        except BaseException:  # Ctrl-C while waiting
            handle.close()
            raise
        if not locked:
            handle.close()
            return None
        if path.exists() and os.path.samestat(os.fstat(handle.fileno()), path.stat()):
            return handle
        handle.close()  # we locked a lock file its holder had already removed: take the new one


def _lock(handle: IO[str], path: Path) -> bool:
    """Lock ``handle`` exclusively, waiting for another holder; ``False`` when the file system refuses locks."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        rank_zero_info(f"Waiting for another process that is writing into {path.parent} (it holds {path}).")
        fcntl.flock(handle, fcntl.LOCK_EX)
    except OSError:
        return False
    return True


def remove_leftovers(folder: Path, patterns: Sequence[str]) -> None:
    """Delete the entries of ``folder`` matching ``patterns`` (an interrupted run's; call under the folder lock)."""
    for pattern in patterns:
        for leftover in sorted(folder.glob(pattern)):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            rank_zero_info(f"Removed {leftover}, left by an interrupted download or extraction.")


def umask() -> int:
    """The process's file-creation mask."""
    mask = os.umask(0)  # the only way to read the umask is to set it
    os.umask(mask)
    return mask
