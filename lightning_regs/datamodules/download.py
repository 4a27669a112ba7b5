"""Verified downloads and safe archive extraction: nothing unverified is kept, nothing escapes the destination.

:func:`download_file` streams a URL (``http``, ``https`` or ``file``) into a temporary file beside
the destination while hashing it, and renames it into place only when its sha256 matches; a wrong
checksum or an interrupted transfer leaves nothing behind. An archive already on disk is hashed
again, never trusted. :func:`extract_archive` checks every member of a tar or zip archive before
writing anything (no absolute paths, no ``..``, no links leading outside, no device files, no more
bytes than its caps allow), extracts into a temporary folder, counting what it writes, and moves the
result into place only when all of it succeeded.

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

import contextlib
import glob
import gzip
import hashlib
import http.client
import lzma
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (see the module docstring)
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_RATIO",
    "ArchiveSecurityError",
    "ChecksumError",
    "CorruptArchiveError",
    "DownloadError",
    "download_file",
    "extract_archive",
    "remove_interrupted",
    "sha256_of",
]

_CHUNK = 1 << 20
_SCHEMES = ("http", "https", "file")
_LOCK = ".lightning_regs.lock"
_STAGING = ".extracting-"
#: Default cap on the bytes an archive may extract to: CUB-200-2011 (~1.1 GiB) extracts to ~1.2 GiB,
#: CIFAR-100 (~161 MiB) to ~178 MiB; 16 GiB leaves room for any archive these DataModules read.
DEFAULT_MAX_BYTES = 16 << 30
#: Default cap on extracted bytes per archive byte: image archives barely compress (CIFAR: 1.1);
#: decompression bombs reach 1,000 and more.
DEFAULT_MAX_RATIO = 100.0
_RATIO_FREE = 1 << 20  # the ratio cap allows at least 1 MiB, so small archives of text never trip it
# What a truncated or damaged archive raises while it is read (the gzip/bz2/xz/zip layers and tarfile).
_READ_ERRORS = (
    tarfile.ReadError,
    tarfile.CompressionError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    gzip.BadGzipFile,
    zipfile.BadZipFile,
)


class ChecksumError(ValueError):
    """A downloaded or existing file does not have the expected sha256."""


class ArchiveSecurityError(ValueError):
    """An archive member would be written outside the destination, is a link or device file we refuse, or the
    archive would extract to more bytes than its caps allow."""


class CorruptArchiveError(ValueError):
    """An archive cannot be read to its end: it is truncated or damaged."""


class DownloadError(OSError):
    """A download failed: an HTTP error, an unreachable server, a dropped connection or a stall past the timeout."""


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
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
            handle = open(path, "a")  # noqa: SIM115  (closed by _folder_lock)
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


def _remove_leftovers(folder: Path, patterns: Sequence[str]) -> None:
    """Delete the entries of ``folder`` matching ``patterns`` (an interrupted run's; call under the folder lock)."""
    for pattern in patterns:
        for leftover in sorted(folder.glob(pattern)):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            rank_zero_info(f"Removed {leftover}, left by an interrupted download or extraction.")


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
        with _folder_lock(folder):
            _remove_leftovers(folder, (_partial_download(filename), f"{_STAGING}*"))


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
    with _folder_lock(destination.parent):
        _remove_leftovers(destination.parent, (_partial_download(destination.name),))
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
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
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


def _umask() -> int:
    mask = os.umask(0)  # the only way to read the umask is to set it
    os.umask(mask)
    return mask


def _check_member_name(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ArchiveSecurityError(f"{archive} has a member with an absolute path, {name!r}; refusing to extract it.")
    if ".." in path.parts:
        raise ArchiveSecurityError(
            f"{archive} has a member that climbs out of the destination, {name!r}; refusing to extract it."
        )
    return path


def _climbs_out(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return True
    return False


def _check_tar_member(member: tarfile.TarInfo, archive: Path) -> None:
    path = _check_member_name(member.name, archive)
    if member.isdev() or not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise ArchiveSecurityError(
            f"{archive} has a device file, fifo or other special member, {member.name!r}; refusing to extract it."
        )
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        # a symlink resolves from its own folder, a hard link from the archive root
        resolved = (path.parent / target) if member.issym() else target
        if target.is_absolute() or _climbs_out(resolved):
            raise ArchiveSecurityError(
                f"{archive} has a link {member.name!r} -> {member.linkname!r} that points outside the destination; "
                "refusing to extract it."
            )


def _check_no_path_through_symlinks(members: list[tarfile.TarInfo], archive: Path) -> None:
    """Refuse members (and link targets) that pass THROUGH a symlink of the archive.

    Each link is checked on its own, lexically; a chain (``a -> .``, ``a/b -> ..``, ``a/b/x -> ..``,
    then ``a/b/x/escaped.txt``) passes that check link by link and still escapes. Paths that only
    end at a symlink are fine: writing to or linking to a checked link stays inside.
    """
    symlinks = {PurePosixPath(m.name.replace("\\", "/")) for m in members if m.issym()}
    if not symlinks:
        return
    for member in members:
        path = PurePosixPath(member.name.replace("\\", "/"))
        paths = [("", path)]
        if member.issym():
            paths.append((f" -> {member.linkname!r}", path.parent / member.linkname))
        elif member.islnk():
            paths.append((f" -> {member.linkname!r}", PurePosixPath(member.linkname)))
        for arrow, checked in paths:
            through = [link for link in checked.parents if link in symlinks]
            if through:
                raise ArchiveSecurityError(
                    f"{archive} has a member {member.name!r}{arrow} that goes through the symlink "
                    f"{str(through[-1])!r} of the same archive; refusing to extract it (links could chain out of "
                    "the destination)."
                )


class _Budget:
    """The bytes an archive may extract to: checked against its headers first, then counted while writing.

    Args:
        archive: the archive (its size scales the ratio cap).
        max_bytes: cap on the total; ``None``: no cap.
        max_ratio: cap on extracted bytes per archive byte (at least 1 MiB is allowed); ``None``: no cap.
    """

    def __init__(self, archive: Path, max_bytes: int | None, max_ratio: float | None) -> None:
        self.archive = archive
        self.caps: list[tuple[int, str]] = []
        if max_bytes is not None:
            self.caps.append((max_bytes, f"max_bytes={max_bytes:,}"))
        if max_ratio is not None:
            size = archive.stat().st_size
            limit = max(int(max_ratio * size), _RATIO_FREE)
            self.caps.append((limit, f"max_ratio={max_ratio:g} (at most {limit:,} bytes from this {size:,}-byte file)"))
        self.written = 0

    def check_declared(self, total: int) -> None:
        """Refuse an archive whose member headers add up to more than a cap, before anything is written."""
        for limit, cap in self.caps:
            if total > limit:
                raise self._error(f"would extract to {total:,} bytes (so its member headers say)", cap)

    def take(self, count: int) -> None:
        """Count ``count`` more bytes about to be written; refuse once a cap is passed (headers can lie)."""
        self.written += count
        for limit, cap in self.caps:
            if self.written > limit:
                raise self._error(f"wrote more than {limit:,} bytes while extracting (more than its headers said)", cap)

    def _error(self, what: str, cap: str) -> ArchiveSecurityError:
        return ArchiveSecurityError(
            f"{self.archive} {what}, over the cap {cap}: refused as a possible decompression bomb, nothing was "
            "extracted. If you trust the archive, raise the cap: extract_archive(..., max_bytes=<bytes>, "
            "max_ratio=<ratio>), where None lifts it."
        )


class _CountingReader:
    """A read-only file object that charges every byte read to a :class:`_Budget` (the tar member data)."""

    def __init__(self, raw: Any, budget: _Budget) -> None:
        self.raw, self.budget = raw, budget

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.budget.take(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def _declared_size(members: Sequence[tarfile.TarInfo] | Sequence[zipfile.ZipInfo]) -> int:
    """The bytes the member headers of an archive announce (regular files only)."""
    total = 0
    for member in members:
        if isinstance(member, zipfile.ZipInfo):
            total += member.file_size
        elif member.isreg():
            total += member.size
    return total


def _extract_tar(archive: Path, staging: Path, budget: _Budget) -> None:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            _check_tar_member(member, archive)
        _check_no_path_through_symlinks(members, archive)
        budget.check_declared(_declared_size(members))
        tar.fileobj = _CountingReader(tar.fileobj, budget)  # member data is read from here, and only here
        # the "data" filter (Python >= 3.10.12 / 3.11.4) re-checks what _check_tar_member checked
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(staging, members=members, **extra)


def _extract_zip(archive: Path, staging: Path, budget: _Budget) -> None:
    # by hand rather than ZipFile.extractall, to count the bytes written (zip symlinks stay plain files, as there)
    with zipfile.ZipFile(archive) as zipped:
        members = zipped.infolist()
        paths = [_check_member_name(member.filename, archive) for member in members]
        budget.check_declared(_declared_size(members))
        for member, path in zip(members, paths, strict=True):
            target = staging.joinpath(*path.parts)
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zipped.open(member) as source, open(target, "wb") as out:
                while chunk := source.read(_CHUNK):
                    budget.take(len(chunk))
                    out.write(chunk)


def _move_into_place(staging: Path, destination: Path, archive: Path, overwrite: bool) -> list[Path]:
    """Move the top-level entries of ``staging`` into ``destination``; return their new paths."""
    entries = sorted(staging.iterdir())
    existing = [destination / entry.name for entry in entries if (destination / entry.name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"Extracting {archive} would replace {[str(p) for p in existing]}; remove them or pass overwrite=True."
        )
    written = []
    for entry in entries:
        target = destination / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(entry, target)
        written.append(target)
    return written


def extract_archive(
    archive: str | os.PathLike,
    destination: str | os.PathLike,
    overwrite: bool = False,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    max_ratio: float | None = DEFAULT_MAX_RATIO,
) -> list[Path]:
    """Extract a tar (any compression) or zip archive into ``destination``, all or nothing.

    Every member is checked first, and the sizes its headers announce are held against the caps;
    the archive is extracted into a temporary folder inside ``destination``, counting the bytes
    written against the caps again (headers can lie), and its top-level entries are then moved into
    place. What an interrupted extraction left in ``destination`` is removed first.

    Args:
        archive: the ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz`` or ``.zip`` file.
        destination: the folder to extract into (created if missing).
        overwrite: replace top-level entries that already exist in ``destination``; otherwise they raise.
        max_bytes: the most bytes the archive may extract to (default 16 GiB); ``None``: no cap.
        max_ratio: the most bytes extracted per byte of archive (default 100; at least 1 MiB is
            always allowed); ``None``: no cap.

    Returns:
        The top-level paths written in ``destination``.

    Raises:
        ArchiveSecurityError: a member with an absolute path, a ``..`` component, a link pointing
            outside, or a device file, or more bytes than a cap allows (nothing is extracted).
        CorruptArchiveError: the archive is truncated or damaged (nothing is extracted).
        FileExistsError: a top-level entry exists and ``overwrite`` is False.
        ValueError: the file is neither a tar nor a zip archive.
    """
    archive, destination = Path(archive), Path(destination)
    if tarfile.is_tarfile(archive):
        extract = _extract_tar
    elif zipfile.is_zipfile(archive):
        extract = _extract_zip
    else:
        raise ValueError(f"{archive} is neither a tar nor a zip archive (or it is truncated); delete it and retry.")
    destination.mkdir(parents=True, exist_ok=True)
    with _folder_lock(destination):
        _remove_leftovers(destination, (f"{_STAGING}*",))
        staging = Path(tempfile.mkdtemp(dir=destination, prefix=_STAGING))
        try:
            try:
                extract(archive, staging, _Budget(archive, max_bytes, max_ratio))
            except _READ_ERRORS as error:
                raise CorruptArchiveError(
                    f"{archive} is truncated or damaged ({type(error).__name__}: {error}); nothing was extracted. "
                    "Delete it and download it again (with download=True, prepare_data fetches it and checks its "
                    "sha256)."
                ) from error
            return _move_into_place(staging, destination, archive, overwrite)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
