"""Safe archive extraction: every member checked first, bytes capped, all or nothing.

:func:`extract_archive` checks every member of a tar or zip archive before writing anything (no absolute paths,
no ``..``, no links leading outside, no device files, no more bytes than its caps allow), extracts into a
temporary folder, counting what it writes, and moves the result into place only when all of it succeeded. It
holds the folder's lock (:mod:`~lightning_regs.datamodules.folder_lock`) and removes the ``.extracting-*``
folder a killed extraction left.

Example::

    >>> import tarfile, tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.txt").write_text("hello")
    >>> with tarfile.open(folder / "a.tar.gz", "w:gz") as tar:
    ...     tar.add(folder / "a.txt", arcname="data/a.txt")
    >>> [p.name for p in extract_archive(folder / "a.tar.gz", folder / "out")]
    ['data']
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from lightning_regs.datamodules.folder_lock import folder_lock, remove_leftovers

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_RATIO",
    "STAGING_PREFIX",
    "ArchiveSecurityError",
    "CorruptArchiveError",
    "extract_archive",
]

_CHUNK = 1 << 20
STAGING_PREFIX = ".extracting-"
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


class ArchiveSecurityError(ValueError):
    """An archive member would be written outside the destination, is a link or device file we refuse, or the
    archive would extract to more bytes than its caps allow."""


class CorruptArchiveError(ValueError):
    """An archive cannot be read to its end: it is truncated or damaged."""


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
    with folder_lock(destination):
        remove_leftovers(destination, (f"{STAGING_PREFIX}*",))
        staging = Path(tempfile.mkdtemp(dir=destination, prefix=STAGING_PREFIX))
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
