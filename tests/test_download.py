import hashlib
import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from lightning_regs.datamodules import download as download_module
from lightning_regs.datamodules.download import (
    ArchiveSecurityError,
    ChecksumError,
    DownloadError,
    download_file,
    extract_archive,
    sha256_of,
)

PAYLOAD = b"lightning_regs" * 100_000  # > one 1 MiB chunk, so streaming is exercised


def _source(tmp_path: Path) -> tuple[Path, str]:
    source = tmp_path / "server" / "data.bin"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    return source, hashlib.sha256(PAYLOAD).hexdigest()


def test_download_from_file_url_keeps_verified_bytes(tmp_path):
    source, digest = _source(tmp_path)
    out = download_file(source.as_uri(), tmp_path / "dl" / "data.bin", sha256=digest.upper())
    assert out.read_bytes() == PAYLOAD
    assert sorted(p.name for p in out.parent.iterdir()) == ["data.bin"]


def test_wrong_checksum_raises_and_leaves_nothing(tmp_path):
    source, _ = _source(tmp_path)
    folder = tmp_path / "dl"
    with pytest.raises(ChecksumError, match="sha256"):
        download_file(source.as_uri(), folder / "data.bin", sha256="0" * 64)
    assert list(folder.iterdir()) == []


def test_existing_file_is_reverified_and_replaced_when_wrong(tmp_path):
    source, digest = _source(tmp_path)
    target = tmp_path / "data.bin"
    target.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="downloading it again"):
        download_file(source.as_uri(), target, sha256=digest)
    assert target.read_bytes() == PAYLOAD
    # a matching file is not downloaded again: point the URL at nothing and it still succeeds
    assert download_file((tmp_path / "missing").as_uri(), target, sha256=digest) == target


def test_existing_wrong_file_and_wrong_download_leaves_the_old_file_alone(tmp_path):
    source, _ = _source(tmp_path)
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    with pytest.warns(UserWarning), pytest.raises(ChecksumError):
        download_file(source.as_uri(), target, sha256="1" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin", "server"]


class _BrokenResponse(io.BytesIO):
    def read(self, size=-1):
        if self.tell() >= 3:
            raise ConnectionResetError("connection dropped")
        return super().read(3)


def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(download_module.urllib.request, "urlopen", lambda url, timeout: _BrokenResponse(b"abcdefgh"))
    with pytest.raises(DownloadError, match=r"failed midway: ConnectionResetError: connection dropped") as caught:
        download_file("https://example.invalid/x.bin", tmp_path / "x.bin", sha256="2" * 64)
    assert isinstance(caught.value.__cause__, ConnectionResetError)
    assert list(tmp_path.iterdir()) == []


def test_bad_scheme_and_bad_digest(tmp_path):
    with pytest.raises(ValueError, match="scheme"):
        download_file("ftp://example.invalid/x", tmp_path / "x", sha256="3" * 64)
    with pytest.raises(ValueError, match="hex digest"):
        download_file("https://example.invalid/x", tmp_path / "x", sha256="abc")


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def test_extract_tar_and_zip(tmp_path):
    archive = _tar(tmp_path / "a.tgz", [(_file("top/a.txt"), b"A"), (_file("top/sub/b.txt"), b"B")])
    written = extract_archive(archive, tmp_path / "out")
    assert written == [tmp_path / "out" / "top"]
    assert (tmp_path / "out/top/sub/b.txt").read_bytes() == b"B"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["top"]
    with pytest.raises(FileExistsError, match="overwrite"):
        extract_archive(archive, tmp_path / "out")
    extract_archive(archive, tmp_path / "out", overwrite=True)
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zipped:
        zipped.writestr("z/c.txt", "C")
    extract_archive(tmp_path / "a.zip", tmp_path / "zout")
    assert (tmp_path / "zout/z/c.txt").read_text() == "C"


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ((_file("../evil.txt"), b"x"), "climbs out"),
        ((_file("top/../../evil.txt"), b"x"), "climbs out"),
        ((_file("/tmp/evil.txt"), b"x"), "absolute"),
        ((_link("top/link", "../../etc/passwd"), None), "outside"),
        ((_link("top/link", "/etc/passwd"), None), "outside"),
        ((_link("top/hard", "../outside.txt", tarfile.LNKTYPE), None), "outside"),
        ((_link("top/dev", "", tarfile.CHRTYPE), None), "device"),
        ((_link("top/fifo", "", tarfile.FIFOTYPE), None), "device"),
    ],
)
def test_malicious_tar_members_are_rejected_and_nothing_is_extracted(tmp_path, member, message):
    archive = _tar(tmp_path / "bad.tgz", [(_file("top/good.txt"), b"ok"), member])
    out = tmp_path / "out"
    with pytest.raises(ArchiveSecurityError, match=message):
        extract_archive(archive, out)
    assert list(out.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_links_inside_the_destination_are_allowed(tmp_path):
    archive = _tar(tmp_path / "ok.tgz", [(_file("top/a.txt"), b"A"), (_link("top/sub/link", "../a.txt"), None)])
    extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out/top/sub/link").read_bytes() == b"A"


def test_zip_traversal_is_rejected(tmp_path):
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zipped:
        zipped.writestr("ok.txt", "fine")
        zipped.writestr("../evil.txt", "x")
    with pytest.raises(ArchiveSecurityError, match="climbs out"):
        extract_archive(tmp_path / "bad.zip", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_not_an_archive(tmp_path):
    (tmp_path / "x.tgz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="neither a tar nor a zip"):
        extract_archive(tmp_path / "x.tgz", tmp_path / "out")


def test_sha256_of_matches_hashlib(tmp_path):
    (tmp_path / "f").write_bytes(PAYLOAD)
    assert sha256_of(tmp_path / "f") == hashlib.sha256(PAYLOAD).hexdigest()


def test_a_truncated_archive_leaves_nothing_half_extracted(tmp_path):
    blobs = [(_file(f"top/{i}.bin"), _random_bytes(i)) for i in range(4)]
    archive = _tar(tmp_path / "full.tgz", blobs)
    truncated = tmp_path / "cut.tgz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size * 3 // 4])
    out = tmp_path / "out"
    with pytest.raises((tarfile.TarError, EOFError, OSError, ValueError)):
        extract_archive(truncated, out)
    assert not out.exists() or list(out.iterdir()) == []


def _random_bytes(seed: int, size: int = 200_000) -> bytes:
    """Incompressible bytes, so cutting the gzip stream cuts into the members."""
    import random

    return random.Random(seed).randbytes(size)


@pytest.mark.parametrize("has_data_filter", [True, False])
@pytest.mark.parametrize(
    "members",
    [
        # each link is inside on its own; together a/b/x is two levels above the destination
        [_link("a", "."), _link("a/b", ".."), _link("a/b/x", ".."), (_file("a/b/x/escaped.txt"), b"x")],
        # a link whose target goes through another link: c -> a/.. is the parent of the destination
        [_link("a", "."), _link("c", "a/.."), (_file("top/ok.txt"), b"ok")],
        # a hard link whose target goes through a link
        [_link("a", "."), (_file("top/ok.txt"), b"ok"), _link("h", "a/top/ok.txt", tarfile.LNKTYPE)],
    ],
)
def test_chained_links_are_rejected_with_or_without_the_data_filter(tmp_path, monkeypatch, members, has_data_filter):
    if not has_data_filter:  # Python < 3.10.12 / 3.11.4: only our own checks stand between the archive and the disk
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    members = [m if isinstance(m, tuple) else (m, None) for m in members]
    archive = _tar(tmp_path / "chain.tgz", members)
    out = tmp_path / "deep" / "out"
    with pytest.raises(ArchiveSecurityError, match="goes through the symlink 'a'"):
        extract_archive(archive, out)
    assert list(out.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["out"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain.tgz", "deep"]


def test_a_member_ending_at_a_link_inside_is_still_allowed(tmp_path, monkeypatch):
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    members = [(_file("top/a.txt"), b"A"), (_link("top/alias", "a.txt"), None), (_link("top/second", "alias"), None)]
    extract_archive(_tar(tmp_path / "ok.tgz", members), tmp_path / "out")
    assert (tmp_path / "out/top/second").read_bytes() == b"A"


def test_downloaded_files_get_the_umask_permissions_not_mkstemps_0600(tmp_path):
    source, digest = _source(tmp_path)
    previous = os.umask(0o027)
    try:
        out = download_file(source.as_uri(), tmp_path / "dl" / "data.bin", sha256=digest)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def test_a_failure_midway_through_extraction_leaves_the_destination_unchanged(tmp_path, monkeypatch):
    out = tmp_path / "out"
    (out / "top").mkdir(parents=True)
    (out / "top" / "old.txt").write_bytes(b"old")
    (out / "keep.txt").write_bytes(b"keep")
    before = _snapshot(out)
    archive = _tar(tmp_path / "a.tgz", [(_file(f"top/{i}.txt"), b"new") for i in range(4)] + [(_file("z.txt"), b"z")])
    original = tarfile.TarFile.makefile
    written = []

    def fail_on_the_third(self, tarinfo, targetpath):
        if len(written) == 2:
            raise OSError("disk full")
        original(self, tarinfo, targetpath)
        written.append(targetpath)

    monkeypatch.setattr(tarfile.TarFile, "makefile", fail_on_the_third)
    with pytest.raises(OSError, match="disk full"):
        extract_archive(archive, out, overwrite=True)
    assert len(written) == 2  # two members were written (into the staging folder) before the failure
    assert _snapshot(out) == before  # old content kept, no new member, no staging folder left
