"""Safe archive extraction: every member checked first, bytes and members capped, verified to the end, all or nothing.

:func:`extract_archive` checks every member of a tar or zip archive before writing anything (no absolute paths,
no ``..``, no links leading outside, no device files, no encrypted members, no more members or bytes than its
caps allow), extracts into a temporary folder, counting what it writes, reads the archive to its very end (the
gzip, bz2 and xz checksums, each zip member's CRC-32, the tar end-of-archive marker) and moves the result into
place only when all of it succeeded. It holds the folder's lock (:mod:`~lightning_regs.datamodules.folder_lock`)
and removes the ``.extracting-*`` folder a killed extraction left.

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

import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from lightning_regs.datamodules.archive_checks import (
    _READ_ERRORS,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_MEMBERS,
    DEFAULT_MAX_RATIO,
    ArchiveSecurityError,
    CorruptArchiveError,
    EncryptedArchiveError,
    _Budget,
    _check_member_name,
    _check_no_path_through_symlinks,
    _check_tar_member,
    _CountingReader,
    _ReadGuard,
)
from lightning_regs.datamodules.folder_lock import folder_lock, remove_leftovers

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_MEMBERS",
    "DEFAULT_MAX_RATIO",
    "STAGING_PREFIX",
    "ArchiveSecurityError",
    "CorruptArchiveError",
    "EncryptedArchiveError",
    "extract_archive",
]

_CHUNK = 1 << 20
STAGING_PREFIX = ".extracting-"


def _declared_size(members: Sequence[tarfile.TarInfo] | Sequence[zipfile.ZipInfo]) -> int:
    """The bytes the member headers of an archive announce (regular files only)."""
    total = 0
    for member in members:
        if isinstance(member, zipfile.ZipInfo):
            total += member.file_size
        elif member.isreg():
            total += member.size
    return total


def _check_member_count(count: int, archive: Path, max_members: int | None) -> None:
    if max_members is not None and count > max_members:
        raise ArchiveSecurityError(
            f"{archive} has more than max_members={max_members:,} members: refused (an archive of many empty "
            "members exhausts memory and inodes, and no byte cap sees it), nothing was extracted. If you trust the "
            "archive, raise the cap: extract_archive(..., max_members=<count>), where None lifts it."
        )


def _tar_members(tar: tarfile.TarFile, archive: Path, budget: _Budget, max_members: int | None) -> list:
    """Every member, checked as it is read, with the count and the announced bytes held against the caps.

    Reading member by member stops a bomb at the first header past a cap, before the data it announces
    is decompressed to skip over it.
    """
    members, declared = [], 0
    while (member := tar.next()) is not None:
        members.append(member)
        _check_member_count(len(members), archive, max_members)
        _check_tar_member(member, archive)
        declared += _declared_size((member,))
        budget.check_declared(declared)
    return members


def _check_tar_end(tar: tarfile.TarFile, archive: Path) -> None:
    """The archive ends as written: an end-of-archive block after the last member, then the whole compressed
    stream read to its end, where gzip, bz2 and xz check their CRCs and sizes (tarfile stops before them, and
    stops without a word at a missing or damaged header)."""
    tar.fileobj.seek(tar.offset)
    block = tar.fileobj.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE or block.count(tarfile.NUL) != tarfile.BLOCKSIZE:
        what = "it ends" if len(block) < tarfile.BLOCKSIZE else f"a damaged or unreadable header at byte {tar.offset:,}"
        raise CorruptArchiveError(
            f"{archive} is truncated or damaged: after its member {tar.members[-1].name if tar.members else None!r} "
            f"{what} without the end-of-archive marker, so members may be missing; nothing was extracted. Delete it "
            "and download it again (with download=True, prepare_data fetches it and checks its sha256)."
        )
    while tar.fileobj.read(_CHUNK):
        pass


def _extract_tar(archive: Path, staging: Path, budget: _Budget, max_members: int | None) -> None:
    with tarfile.open(archive) as tar:
        tar.fileobj = _ReadGuard(tar.fileobj)
        members = _tar_members(tar, archive, budget, max_members)
        _check_no_path_through_symlinks(members, archive)
        tar.fileobj = _CountingReader(tar.fileobj, budget)  # member data is read from here, and only here
        # the "data" filter (Python >= 3.10.12 / 3.11.4) re-checks what _check_tar_member checked
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(staging, members=members, **extra)
        _check_tar_end(tar, archive)


_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
                zipfile.ZIP_LZMA: "lzma"}  # fmt: skip


def _check_zip_members(members: list[zipfile.ZipInfo], archive: Path, max_members: int | None) -> list[PurePosixPath]:
    _check_member_count(len(members), archive, max_members)
    paths, seen = [], set()
    for member in members:
        path = _check_member_name(member.filename, archive)
        if member.flag_bits & 0x1:
            raise EncryptedArchiveError(
                f"{archive} has an encrypted member, {member.filename!r}: encrypted zip archives are not extracted "
                "(there is no password to give). Decrypt it yourself (e.g. `unzip` with the password) and extract "
                "the data into the folder by hand, or get an unencrypted copy."
            )
        if member.compress_type not in _ZIP_METHODS:
            raise EncryptedArchiveError(
                f"{archive} stores the member {member.filename!r} with zip compression method "
                f"{member.compress_type}, which Python's zipfile cannot read ({', '.join(_ZIP_METHODS.values())} "
                "only); nothing was extracted. Extract it with another tool, or re-pack it as a .tar.gz."
            )
        key = path.as_posix().rstrip("/")
        if key in seen:
            raise ArchiveSecurityError(
                f"{archive} has two members named {member.filename!r}: which one is meant depends on the tool that "
                "reads it, so it is refused; nothing was extracted. Delete it and download it again."
            )
        seen.add(key)
        paths.append(path)
    return paths


def _extract_zip(archive: Path, staging: Path, budget: _Budget, max_members: int | None) -> None:
    # by hand rather than ZipFile.extractall, to count the bytes written (zip symlinks stay plain files, as there);
    # every member is read to its end, where zipfile checks its CRC-32 (a mismatch raises BadZipFile)
    with zipfile.ZipFile(archive) as zipped:
        members = zipped.infolist()
        paths = _check_zip_members(members, archive, max_members)
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
    max_members: int | None = DEFAULT_MAX_MEMBERS,
) -> list[Path]:
    """Extract a tar (any compression) or zip archive into ``destination``, all or nothing.

    Every member is checked first, and their count and the sizes their headers announce are held
    against the caps; the archive is extracted into a temporary folder inside ``destination``,
    counting the bytes written against the caps again (headers can lie), read to its very end (the
    gzip/bz2/xz checksums, each zip member's CRC-32, the tar end-of-archive marker), and its top-level
    entries are then moved into place. What an interrupted extraction left in ``destination`` is
    removed first.

    Args:
        archive: the ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz`` or ``.zip`` file.
        destination: the folder to extract into (created if missing).
        overwrite: replace top-level entries that already exist in ``destination``; otherwise they raise.
        max_bytes: the most bytes the archive may extract to (default 16 GiB); ``None``: no cap.
        max_ratio: the most bytes extracted per byte of archive (default 100; at least 1 MiB is
            always allowed); ``None``: no cap.
        max_members: the most members (files, folders, links) the archive may hold (default
            1,000,000); ``None``: no cap.

    Returns:
        The top-level paths written in ``destination``.

    Raises:
        ArchiveSecurityError: a member with an absolute path, a ``..`` component, a link pointing
            outside, a device file, two zip members of the same name, or more members or bytes than a
            cap allows (nothing is extracted).
        CorruptArchiveError: the archive is truncated or damaged: a checksum (gzip, bz2, xz, zip
            CRC-32) does not match, or it ends early (nothing is extracted).
        EncryptedArchiveError: a zip member is encrypted, or compressed with a method Python cannot
            read (nothing is extracted).
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
                extract(archive, staging, _Budget(archive, max_bytes, max_ratio), max_members)
            except _READ_ERRORS as error:
                raise CorruptArchiveError(
                    f"{archive} is truncated or damaged ({type(error).__name__}: {error}); nothing was extracted. "
                    "Delete it and download it again (with download=True, prepare_data fetches it and checks its "
                    "sha256)."
                ) from error
            return _move_into_place(staging, destination, archive, overwrite)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
