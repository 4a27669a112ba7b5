"""Verified downloads: nothing unverified is kept (safe extraction is :mod:`~lightning_regs.datamodules.archives`).

:func:`download_file` streams a URL (``http``, ``https`` or ``file``) into a temporary file beside
the destination while hashing it, and renames it into place only when its sha256 matches; a wrong
checksum or an interrupted transfer leaves nothing behind. An archive already on disk is hashed
again, never trusted. :func:`extract_archive` (re-exported here) extracts it, all or nothing.

Both hold a lock on the folder they write into (``.lightning_regs.lock``, removed when done), so a
second process waits instead of racing, and the leftovers of a run that was killed (a hidden
``.<name>.*.part`` download, an ``.extracting-*`` folder) are told from live work and removed by the
next run. The lock is an advisory ``fcntl.flock``: where that does not exist (Windows) or the file
system refuses it, there is no lock and the leftovers are still removed, so do not prepare the same
folder from two processes at once there.

Example::

    >>> import hashlib, tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> source = folder / "source.bin"
    >>> _ = source.write_bytes(b"hello")
    >>> digest = hashlib.sha256(b"hello").hexdigest()
    >>> path = download_file(source.as_uri(), folder / "copy.bin", sha256=digest)
    >>> path.read_bytes()
    b'hello'
"""

from __future__ import annotations

import glob
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO

from lightning.pytorch.utilities import rank_zero_warn

from lightning_regs.datamodules.archives import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_MEMBERS,
    DEFAULT_MAX_RATIO,
    STAGING_PREFIX,
    ArchiveSecurityError,
    CorruptArchiveError,
    EncryptedArchiveError,
    extract_archive,
)
from lightning_regs.datamodules.folder_lock import folder_lock, remove_leftovers, umask

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_MEMBERS",
    "DEFAULT_MAX_RATIO",
    "ArchiveSecurityError",
    "ChecksumError",
    "CorruptArchiveError",
    "DownloadError",
    "EncryptedArchiveError",
    "download_file",
    "extract_archive",
    "remove_interrupted",
    "sha256_of",
]

_CHUNK = 1 << 20
_SCHEMES = ("http", "https", "file")


class ChecksumError(ValueError):
    """A downloaded or existing file does not have the expected sha256."""


class DownloadError(OSError):
    """A download failed: an HTTP error, an unreachable server, a dropped connection or a stall past the timeout."""


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _partial_download(filename: str) -> str:
    """The glob of the hidden files an interrupted download of ``filename`` leaves beside it (see :func:`_fetch`)."""
    return f".{glob.escape(filename)}.*.part"


def remove_interrupted(folder: str | os.PathLike, filename: str) -> None:
    """Remove what a killed download of ``filename`` or a killed extraction left in ``folder``.

    :func:`download_file` and :func:`extract_archive` do this themselves before they write; call it
    when neither runs because the data is already in place (the leftover of a run killed at the
    very end of an extraction is an empty ``.extracting-*`` folder).
    """
    folder = Path(folder)
    if folder.is_dir():
        with folder_lock(folder):
            remove_leftovers(folder, (_partial_download(filename), f"{STAGING_PREFIX}*"))


def download_file(url: str, destination: str | os.PathLike, sha256: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``destination`` and keep it only if its sha256 is ``sha256``.

    Args:
        url: an ``http://``, ``https://`` or ``file://`` address.
        destination: the file to write (its folder is created).
        sha256: the expected hex digest (case-insensitive).
        timeout: seconds to wait for the server (to connect, and for each read) before giving up.

    Returns:
        ``destination`` as a ``Path``.

    Raises:
        ChecksumError: the downloaded bytes have another sha256 (nothing is left on disk).
        DownloadError: an HTTP error, an unreachable server, a dropped connection or a stall longer
            than ``timeout`` (nothing is left on disk).
        ValueError: the URL scheme is not supported or ``sha256`` is not a hex digest.
    """
    expected = sha256.strip().lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise ValueError(f"sha256 must be a 64-character hex digest, got {sha256!r}.")
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in _SCHEMES:
        raise ValueError(f"Cannot download {url!r}: the scheme {scheme!r} is not one of {_SCHEMES}.")
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(destination.parent):
        remove_leftovers(destination.parent, (_partial_download(destination.name),))
        if destination.exists():
            actual = sha256_of(destination)
            if actual == expected:
                return destination
            rank_zero_warn(
                f"{destination} exists but its sha256 is {actual}, not {expected}: downloading it again from {url}."
            )
        _fetch(url, destination, expected, timeout)
    return destination


def _fetch(url: str, destination: Path, expected: str, timeout: float) -> None:
    """Stream ``url`` into a hidden ``.part`` file beside ``destination``; rename it there if its sha256 matches."""
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            actual = _stream(url, out, destination, expected, timeout)
        if actual != expected:
            raise ChecksumError(
                f"The file downloaded from {url} has sha256 {actual}, expected {expected}; it was deleted. "
                "The server may be serving another version or a truncated file: retry, or download it by hand "
                f"and check it with `sha256sum` before placing it at {destination}."
            )
        os.chmod(temporary, 0o666 & ~umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(temporary, destination)
    except BaseException:  # also Ctrl-C: never leave a partial download behind
        Path(temporary).unlink(missing_ok=True)
        raise


def _stream(url: str, out: IO[bytes], destination: Path, expected: str, timeout: float) -> str:
    """Copy ``url`` to ``out``; return the sha256 of what came. Network failures become :class:`DownloadError`."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
        raise DownloadError(_download_failure(url, error, timeout) + _by_hand(destination, expected)) from error
    return digest.hexdigest()


def _download_failure(url: str, error: BaseException, timeout: float) -> str:
    """What went wrong with the download of ``url``, in words, and what to do about it."""
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(error, urllib.error.HTTPError):
        return (
            f"Downloading {url} failed: the server answered HTTP {error.code} ({error.reason}). The file may have "
            "moved or be unavailable for now: check the address in a browser, retry later."
        )
    if isinstance(reason, TimeoutError):
        return (
            f"Downloading {url} stalled: the server sent nothing for {timeout:g} s. Retry, or give it longer: "
            "download_timeout=<seconds> on the DataModule (timeout= for download_file)."
        )
    if isinstance(error, urllib.error.URLError):
        return f"Downloading {url} failed: could not reach the server ({reason}). Check the network and any proxy."
    return f"Downloading {url} failed midway: {type(error).__name__}: {error}. Retry."


def _by_hand(destination: Path, expected: str) -> str:
    return (
        f" Nothing was kept. To fetch it by hand instead: download it, check that its sha256 is {expected} "
        f"(`sha256sum`), and place it at {destination}."
    )
