"""The checks of :func:`~lightning_regs.datamodules.archives.extract_archive`: member names, links, caps and reads.

Each refusal is a named error (:class:`ArchiveSecurityError`, :class:`CorruptArchiveError`,
:class:`EncryptedArchiveError`) that names the archive and the member; the caps default to
:data:`DEFAULT_MAX_BYTES`, :data:`DEFAULT_MAX_RATIO` and :data:`DEFAULT_MAX_MEMBERS`.
"""

from __future__ import annotations

import gzip
import lzma
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_MEMBERS",
    "DEFAULT_MAX_RATIO",
    "ArchiveSecurityError",
    "CorruptArchiveError",
    "EncryptedArchiveError",
]

#: Default cap on the bytes an archive may extract to: CUB-200-2011 (~1.1 GiB) extracts to ~1.2 GiB,
#: CIFAR-100 (~161 MiB) to ~178 MiB; 16 GiB leaves room for any archive these DataModules read.
DEFAULT_MAX_BYTES = 16 << 30
#: Default cap on extracted bytes per archive byte: image archives barely compress (CIFAR: 1.1);
#: decompression bombs reach 1,000 and more.
DEFAULT_MAX_RATIO = 100.0
#: Default cap on the members (files, folders, links) of an archive: CUB-200-2011 holds ~12,000, the CIFAR
#: tarballs under 10; a million leaves room for any archive these DataModules read, and stops an archive of
#: empty members (which no byte cap sees) from exhausting memory and inodes.
DEFAULT_MAX_MEMBERS = 1_000_000
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


class _DamagedStream(Exception):
    """A bare ``OSError`` without errno from a decompressor (bz2: "Invalid data stream"), told from disk errors."""


_READ_ERRORS = (*_READ_ERRORS, _DamagedStream)


class ArchiveSecurityError(ValueError):
    """An archive member would be written outside the destination, is a link or device file we refuse, or the
    archive would extract to more bytes than its caps allow."""


class CorruptArchiveError(ValueError):
    """An archive cannot be read to its end: it is truncated or damaged (a checksum does not match)."""


class EncryptedArchiveError(ValueError):
    """A zip archive has encrypted members (or a compression method Python cannot read): it cannot be extracted."""


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


class _ReadGuard:
    """The archive's file object, with the bare ``OSError`` of a damaged bz2 stream made a :class:`_DamagedStream`.

    Only reads and seeks of the archive pass here: an error while writing (a full disk) stays what it is.
    """

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def _guarded(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.raw, method)(*args)
        except OSError as error:
            if type(error) is OSError and error.errno is None:
                raise _DamagedStream(str(error)) from error
            raise

    def read(self, size: int = -1) -> bytes:
        return self._guarded("read", size)

    def seek(self, *args: Any) -> int:
        return self._guarded("seek", *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


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
