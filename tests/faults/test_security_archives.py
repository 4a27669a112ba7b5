"""Archives are verified to their end, their members counted and capped, encrypted zips named (issue 22).

Before the fix ``extract_archive`` extracted a ``.tar.gz`` whose gzip CRC or length was wrong (tarfile
stops reading at the tar end marker, before the gzip trailer), a truncated or damaged ``.tar.xz``, a
plain tar cut at a member boundary or with a damaged header (tarfile ends there without a word), any
number of members, and an encrypted zip raised a bare ``RuntimeError``. Every refusal leaves the
destination as it was (nothing half-extracted, no staging folder, no lock file).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import random
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from lightning_regs.datamodules.cifar import CIFAR10DataModule
from lightning_regs.datamodules.download import (
    DEFAULT_MAX_MEMBERS,
    ArchiveSecurityError,
    CorruptArchiveError,
    EncryptedArchiveError,
    extract_archive,
)
from tests.helpers.fake_datasets_vision import write_cifar, write_cifar_tarball

PAYLOADS = {f"top/{i}.bin": hashlib.sha256(bytes([i])).digest() * 100 for i in range(3)}  # 3,200 bytes each


def _tar_bytes(members: dict[str, bytes] | None = None, extra: list[tarfile.TarInfo] = ()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in (PAYLOADS if members is None else members).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return buffer.getvalue()


def _zip_bytes(members: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for name, data in (PAYLOADS if members is None else members).items():
            zipped.writestr(name, data)
    return buffer.getvalue()


def _flip(data: bytes, position: int) -> bytes:
    spoiled = bytearray(data)
    spoiled[position] ^= 0x55
    return bytes(spoiled)


def _member_end(tar: bytes, count: int) -> int:
    """The offset after the ``count``-th member (header and padded data) of a GNU tar of :data:`PAYLOADS`."""
    return count * (512 + 3584)


def _damaged_second_header(tar: bytes) -> bytes:
    return _flip(tar, _member_end(tar, 1) + 100)  # the mode field: the header checksum no longer matches


def _patch_zip(data: bytes, local_offset: int, central_offset: int, value: int, size: int = 2) -> bytes:
    """Set a field in every local header (``PK\\3\\4``) and central directory entry (``PK\\1\\2``)."""
    spoiled, fmt = bytearray(data), "<H" if size == 2 else "<I"
    for signature, offset in ((b"PK\x03\x04", local_offset), (b"PK\x01\x02", central_offset)):
        at = spoiled.find(signature)
        while at != -1:
            spoiled[at + offset : at + offset + size] = struct.pack(fmt, value)
            at = spoiled.find(signature, at + 4)
    return bytes(spoiled)


def _zip_crc_mismatch() -> bytes:
    data = _zip_bytes({"top/a.txt": b"hello world " * 50})
    info = zipfile.ZipFile(io.BytesIO(data)).infolist()[0]
    return _patch_zip(data, 14, 16, (info.CRC ^ 0xFFFF) & 0xFFFFFFFF, size=4)


def _two_bz2_blocks() -> bytes:
    """A .tar.bz2 of two bzip2 blocks (100 kB each at level 1), so that damage to the second is found mid-way."""
    noise = random.Random(0).randbytes(150_000)
    return bz2.compress(_tar_bytes({"top/0.bin": noise, "top/1.bin": noise[::-1]}), compresslevel=1)


# name -> (file name, bytes, what the message says)
CORRUPT = {
    "gzip-crc-wrong": ("a.tar.gz", lambda: _flip(gzip.compress(_tar_bytes()), -8), r"CRC check failed"),
    "gzip-length-wrong": ("a.tar.gz", lambda: _flip(gzip.compress(_tar_bytes()), -2), r"Incorrect length"),
    "gzip-trailer-missing": ("a.tar.gz", lambda: gzip.compress(_tar_bytes())[:-8], r"ended before"),
    "gzip-cut-in-the-padding": ("a.tar.gz", lambda: gzip.compress(_tar_bytes())[:-20], r"ended before"),
    "gzip-of-a-tar-cut-at-a-member": (
        "a.tar.gz", lambda: gzip.compress(_tar_bytes()[: _member_end(b"", 2)]), r"without the end-of-archive marker"
    ),
    "xz-cut": ("a.tar.xz", lambda: lzma.compress(_tar_bytes())[:-10], r"ended before"),
    "xz-bit-flip": ("a.tar.xz", lambda: _flip(lzma.compress(_tar_bytes()), -30), r"LZMAError|Corrupt"),
    "bz2-cut": ("a.tar.bz2", lambda: bz2.compress(_tar_bytes())[:-10], r"ended before"),
    "bz2-bit-flip-in-a-later-block": ("a.tar.bz2", lambda: _flip(_two_bz2_blocks(), -20), r"Invalid data stream"),
    "tar-cut-at-a-member": ("a.tar", lambda: _tar_bytes()[: _member_end(b"", 1)], r"after its member 'top/0\.bin'"),
    "tar-without-end-marker": ("a.tar", lambda: _tar_bytes()[: _member_end(b"", 3)], r"without the end-of-archive"),
    "tar-damaged-header": ("a.tar", lambda: _damaged_second_header(_tar_bytes()), r"damaged or unreadable header"),
    "tar-cut-mid-member": ("a.tar", lambda: _tar_bytes()[: _member_end(b"", 1) + 1000], r"unexpected end of data"),
    "zip-crc-mismatch": ("a.zip", _zip_crc_mismatch, r"Bad CRC-32"),
    "zip-data-damaged": ("a.zip", lambda: _flip(_zip_bytes(), 60), r"BadZipFile|zlib|Error"),
}  # fmt: skip
# these were already refused by name before the fix (kept as guards); the rest extracted silently
CORRUPT_GUARDS = {"bz2-cut", "tar-cut-mid-member", "zip-crc-mismatch", "zip-data-damaged"}


def _destination(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    out = tmp_path / "out"
    (out / "top").mkdir(parents=True)
    (out / "top" / "old.bin").write_bytes(b"old")
    (out / "keep.txt").write_bytes(b"keep")
    return out, _snapshot(out)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>") for p in folder.rglob("*")}


@pytest.mark.fault(area="security", outcome="refused")
@pytest.mark.parametrize("case", CORRUPT, ids=[f"{c}{'-guard' if c in CORRUPT_GUARDS else ''}" for c in CORRUPT])
def test_a_damaged_or_truncated_archive_is_refused_and_nothing_is_extracted(tmp_path, case):
    name, make, words = CORRUPT[case]
    archive = tmp_path / name
    archive.write_bytes(make())
    out, before = _destination(tmp_path)
    pattern = rf"(?s){archive.name} is truncated or damaged.*{words}.*nothing was extracted.*download it again"
    with pytest.raises(CorruptArchiveError, match=pattern):
        extract_archive(archive, out, overwrite=True)
    assert _snapshot(out) == before


def _entries(kind: str, count: int) -> tuple[dict[str, bytes], list[tarfile.TarInfo]]:
    if kind == "files":
        return {f"top/{i}.txt": b"" for i in range(count)}, []
    infos = []
    for i in range(count):
        info = tarfile.TarInfo(f"top/{kind}{i}")
        info.type = tarfile.DIRTYPE if kind == "dirs" else tarfile.SYMTYPE
        info.linkname = "." if kind == "symlinks" else ""
        infos.append(info)
    return {}, infos


@pytest.mark.fault(area="security", outcome="refused")
@pytest.mark.parametrize("kind", ["files", "dirs", "symlinks"])
@pytest.mark.parametrize("suffix", ["tar", "tar.gz"])
def test_a_tar_with_more_members_than_the_cap_is_refused(tmp_path, kind, suffix):
    members, extra = _entries(kind, 11)
    data = _tar_bytes(members, extra)
    archive = tmp_path / f"many.{suffix}"
    archive.write_bytes(gzip.compress(data) if suffix == "tar.gz" else data)
    out, before = _destination(tmp_path)
    with pytest.raises(ArchiveSecurityError, match=rf"{archive.name} has more than max_members=10 members.*None lifts"):
        extract_archive(archive, out, overwrite=True, max_members=10)
    assert _snapshot(out) == before


@pytest.mark.fault(area="security", outcome="refused")
def test_a_zip_with_more_members_than_the_cap_is_refused(tmp_path):
    archive = tmp_path / "many.zip"
    archive.write_bytes(_zip_bytes({f"top/{i}.txt": b"" for i in range(11)}))
    out, before = _destination(tmp_path)
    with pytest.raises(ArchiveSecurityError, match=r"many\.zip has more than max_members=10 members"):
        extract_archive(archive, out, overwrite=True, max_members=10)
    assert _snapshot(out) == before


@pytest.mark.fault(area="security", outcome="handled")
@pytest.mark.parametrize("max_members", [4, None])
def test_an_archive_at_the_member_cap_or_without_one_is_extracted(tmp_path, max_members):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(gzip.compress(_tar_bytes()))  # 3 files and their folder: 4 members with the implicit one
    extract_archive(archive, tmp_path / "out", max_members=max_members)
    assert {p: (tmp_path / "out" / p).read_bytes() for p in PAYLOADS} == PAYLOADS
    assert DEFAULT_MAX_MEMBERS >= 100_000  # room for CUB-200-2011 (~12,000 members) many times over


@pytest.mark.fault(area="security", outcome="refused")
@pytest.mark.parametrize(
    ("case", "error", "words"),
    [
        ("encrypted", EncryptedArchiveError, r"has an encrypted member, 'top/0\.bin'.*Decrypt it yourself"),
        ("unknown-method", EncryptedArchiveError, r"stores the member 'top/0\.bin' with zip compression method 98"),
        ("duplicate-names", ArchiveSecurityError, r"has two members named 'top/a\.txt'"),
    ],
)
def test_zips_that_cannot_be_extracted_faithfully_are_named(tmp_path, case, error, words):
    if case == "encrypted":  # the general-purpose flag's bit 0 (zipfile cannot write encrypted members)
        data = _patch_zip(_zip_bytes(), 6, 8, 0x1)
    elif case == "unknown-method":  # 98: PPMd, which zipfile does not implement
        data = _patch_zip(_zip_bytes(), 8, 10, 98)
    else:
        buffer = io.BytesIO()
        with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(buffer, "w") as zipped:
            zipped.writestr("top/a.txt", b"first")
            zipped.writestr("top/a.txt", b"second")
        data = buffer.getvalue()
    archive = tmp_path / "a.zip"
    archive.write_bytes(data)
    out, before = _destination(tmp_path)
    with pytest.raises(error, match=rf"a\.zip {words}"):
        extract_archive(archive, out, overwrite=True)
    assert _snapshot(out) == before


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


# guards: refused by name before the fix too, kept so that the new end-to-end checks do not weaken them
UNSAFE = {
    "tar-dot-dot": ("a.tar.gz", lambda: gzip.compress(_tar_bytes({"../escaped.txt": b"x"})), "climbs out"),
    "tar-nested-dot-dot": ("a.tar", lambda: _tar_bytes({"top/../../escaped.txt": b"x"}), "climbs out"),
    "tar-absolute": ("a.tar", lambda: _tar_bytes({"/tmp/escaped.txt": b"x"}), "absolute path"),
    "tar-symlink-out": ("a.tar", lambda: _tar_bytes({}, [_link("top/l", "../../etc", tarfile.SYMTYPE)]), "outside"),
    "tar-absolute-symlink": ("a.tar", lambda: _tar_bytes({}, [_link("l", "/etc/passwd", tarfile.SYMTYPE)]), "outside"),
    "tar-hardlink-out": ("a.tar", lambda: _tar_bytes({}, [_link("h", "../secret", tarfile.LNKTYPE)]), "outside"),
    "tar-device": ("a.tar", lambda: _tar_bytes({}, [_device("top/null")]), "device file"),
    "zip-dot-dot": ("a.zip", lambda: _zip_bytes({"../escaped.txt": b"x"}), "climbs out"),
    "zip-backslash-dot-dot": ("a.zip", lambda: _zip_bytes({"top\\..\\..\\escaped.txt": b"x"}), "climbs out"),
    "zip-absolute": ("a.zip", lambda: _zip_bytes({"/tmp/escaped.txt": b"x"}), "absolute path"),
    "zip-drive-letter": ("a.zip", lambda: _zip_bytes({"C:/escaped.txt": b"x"}), "absolute path"),
}  # fmt: skip


@pytest.mark.fault(area="security", outcome="refused")
@pytest.mark.parametrize("case", UNSAFE)
def test_members_that_lead_outside_are_still_refused(tmp_path, case):
    name, make, words = UNSAFE[case]
    archive = tmp_path / name
    archive.write_bytes(make())
    out, before = _destination(tmp_path)
    with pytest.raises(ArchiveSecurityError, match=rf"{archive.name} has .*{words}.*refusing to extract it"):
        extract_archive(archive, out, overwrite=True)
    assert _snapshot(out) == before
    assert not (tmp_path / "escaped.txt").exists()


GOOD = {
    "tar": lambda: _tar_bytes(),
    "tar.gz": lambda: gzip.compress(_tar_bytes()),
    "tar.bz2": lambda: bz2.compress(_tar_bytes()),
    "tar.xz": lambda: lzma.compress(_tar_bytes()),
    "zip": lambda: _zip_bytes(),
    "tar.gz-zero-padded": lambda: gzip.compress(_tar_bytes()) + bytes(512),  # gzip allows trailing zeros
    "tar.gz-two-gzip-members": lambda: (lambda t: gzip.compress(t[:5000]) + gzip.compress(t[5000:]))(_tar_bytes()),
}


@pytest.mark.fault(area="security", outcome="handled")
@pytest.mark.parametrize("kind", GOOD)
def test_intact_archives_are_extracted_byte_for_byte(tmp_path, kind):
    archive = tmp_path / f"a.{kind.split('-')[0]}"
    archive.write_bytes(GOOD[kind]())
    written = extract_archive(archive, tmp_path / "out")
    assert [p.name for p in written] == ["top"]
    assert {p: (tmp_path / "out" / p).read_bytes() for p in PAYLOADS} == PAYLOADS
    assert sorted(os.listdir(tmp_path / "out")) == ["top"]  # no staging folder, no lock file


@pytest.mark.fault(area="security", outcome="refused")
def test_a_cifar_tarball_with_a_wrong_gzip_crc_is_not_extracted_by_prepare_data(tmp_path, monkeypatch):
    written = write_cifar(tmp_path / "server" / "build")
    archive = write_cifar_tarball(written["folder"], tmp_path / "server" / "cifar-10-python.tar.gz")
    archive.write_bytes(_flip(archive.read_bytes(), -8))  # the sha256 below is that of the damaged file
    monkeypatch.setattr(CIFAR10DataModule, "url", archive.as_uri())
    monkeypatch.setattr(CIFAR10DataModule, "sha256", hashlib.sha256(archive.read_bytes()).hexdigest())
    root = tmp_path / "data"
    with pytest.raises(CorruptArchiveError, match=r"cifar-10-python\.tar\.gz is truncated or damaged.*CRC check"):
        CIFAR10DataModule(root=str(root), download=True, num_workers=0).prepare_data()
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-python.tar.gz"]  # no batches were extracted
