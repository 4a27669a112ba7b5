"""Verified downloads and safe archive extraction: nothing unverified is kept, nothing escapes the destination.

:func:`download_file` streams a URL (``http``, ``https`` or ``file``) into a temporary file beside
the destination while hashing it, and renames it into place only when its sha256 matches; a wrong
checksum or an interrupted transfer leaves nothing behind. An archive already on disk is hashed
again, never trusted. :func:`extract_archive` checks every member of a tar or zip archive before
writing anything (no absolute paths, no ``..``, no links leading outside, no device files),
extracts into a temporary folder and moves the result into place only when all of it succeeded.

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

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["ArchiveSecurityError", "ChecksumError", "download_file", "extract_archive", "sha256_of"]

_CHUNK = 1 << 20
_SCHEMES = ("http", "https", "file")


class ChecksumError(ValueError):
    """A downloaded or existing file does not have the expected sha256."""


class ArchiveSecurityError(ValueError):
    """An archive member would be written outside the destination, or is a link or device file we refuse."""


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(url: str, destination: str | os.PathLike, sha256: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``destination`` and keep it only if its sha256 is ``sha256``.

    Args:
        url: an ``http://``, ``https://`` or ``file://`` address.
        destination: the file to write (its folder is created).
        sha256: the expected hex digest (case-insensitive).
        timeout: seconds to wait for the server before giving up.

    Returns:
        ``destination`` as a ``Path``.

    Raises:
        ChecksumError: the downloaded bytes have another sha256 (nothing is left on disk).
        ValueError: the URL scheme is not supported or ``sha256`` is not a hex digest.
    """
    expected = sha256.strip().lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise ValueError(f"sha256 must be a 64-character hex digest, got {sha256!r}.")
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in _SCHEMES:
        raise ValueError(f"Cannot download {url!r}: the scheme {scheme!r} is not one of {_SCHEMES}.")
    destination = Path(destination)
    if destination.exists():
        actual = sha256_of(destination)
        if actual == expected:
            return destination
        rank_zero_warn(
            f"{destination} exists but its sha256 is {actual}, not {expected}: downloading it again from {url}."
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
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
    return destination


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


def extract_archive(archive: str | os.PathLike, destination: str | os.PathLike, overwrite: bool = False) -> list[Path]:
    """Extract a tar (any compression) or zip archive into ``destination``, all or nothing.

    Every member is checked first; the archive is extracted into a temporary folder inside
    ``destination`` and its top-level entries are then moved into place.

    Args:
        archive: the ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz`` or ``.zip`` file.
        destination: the folder to extract into (created if missing).
        overwrite: replace top-level entries that already exist in ``destination``; otherwise they raise.

    Returns:
        The top-level paths written in ``destination``.

    Raises:
        ArchiveSecurityError: a member with an absolute path, a ``..`` component, a link pointing
            outside, or a device file (nothing is extracted).
        FileExistsError: a top-level entry exists and ``overwrite`` is False.
        ValueError: the file is neither a tar nor a zip archive.
    """
    archive, destination = Path(archive), Path(destination)
    if tarfile.is_tarfile(archive):
        kind = "tar"
    elif zipfile.is_zipfile(archive):
        kind = "zip"
    else:
        raise ValueError(f"{archive} is neither a tar nor a zip archive (or it is truncated); delete it and retry.")
    destination.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=destination, prefix=".extracting-"))
    try:
        if kind == "tar":
            with tarfile.open(archive) as tar:
                members = tar.getmembers()
                for member in members:
                    _check_tar_member(member, archive)
                _check_no_path_through_symlinks(members, archive)
                # the "data" filter (Python >= 3.10.12 / 3.11.4) re-checks what _check_tar_member checked
                extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(staging, members=members, **extra)
        else:
            with zipfile.ZipFile(archive) as zipped:
                for name in zipped.namelist():
                    _check_member_name(name, archive)
                zipped.extractall(staging)
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
    finally:
        shutil.rmtree(staging, ignore_errors=True)
