"""Fault injection on downloads and archives: bombs, lying headers, truncation, HTTP errors, stalls, leftovers.

URLs are faked as in ``tests/test_download.py``: ``file://`` addresses of local files, or a
monkeypatched ``urlopen``; nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import time
import urllib.error
import zipfile
from email.message import Message
from pathlib import Path

import pytest

from lightning_regs.datamodules import archives, folder_lock
from lightning_regs.datamodules import download as download_module
from lightning_regs.datamodules.cifar import CIFAR10DataModule
from lightning_regs.datamodules.download import ArchiveSecurityError, download_file, extract_archive
from tests.helpers.fake_datasets_vision import write_cifar, write_cifar_tarball

ZEROS = 16 << 20  # 16 MiB of zeros compress to ~16 KiB: a ratio of ~1000


def _zip_of(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    return path


def _tar_of(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


ARCHIVERS = {"zip": (_zip_of, "bomb.zip"), "tar.gz": (_tar_of, "bomb.tar.gz")}


@pytest.mark.parametrize("kind", ARCHIVERS)
def test_a_decompression_bomb_is_refused_from_its_headers_before_anything_is_written(tmp_path, kind):
    make, name = ARCHIVERS[kind]
    archive = make(tmp_path / name, {"top/zeros.bin": bytes(ZEROS)})
    assert archive.stat().st_size < 128 << 10
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"{name} would extract to 16,777,216 bytes.*max_ratio=100") as caught:
        extract_archive(archive, out)
    assert isinstance(caught.value, ArchiveSecurityError)
    assert list(out.iterdir()) == []  # nothing written, no staging folder, no lock file


def test_the_total_size_cap_names_itself_and_can_be_lifted(tmp_path):
    payload = hashlib.sha256(b"x").digest() * (1 << 16)  # 2 MiB that do not compress much
    archive = _tar_of(tmp_path / "big.tar.gz", {"top/a.bin": payload})
    with pytest.raises(
        ArchiveSecurityError, match=r"big\.tar\.gz would extract to 2,097,152 bytes.*max_bytes=1,048,576"
    ):
        extract_archive(archive, tmp_path / "out", max_bytes=1 << 20, max_ratio=None)
    extract_archive(archive, tmp_path / "out", max_bytes=None, max_ratio=None)
    assert (tmp_path / "out/top/a.bin").read_bytes() == payload


@pytest.mark.parametrize("kind", ARCHIVERS)
def test_headers_that_lie_are_caught_while_writing(tmp_path, monkeypatch, kind):
    make, name = ARCHIVERS[kind]
    archive = make(tmp_path / name, {"top/a.txt": b"fine", "top/zeros.bin": bytes(ZEROS)})
    # the headers claim nothing: only the count of bytes actually written can stop the bomb
    monkeypatch.setattr(archives, "_declared_size", lambda *args: 0)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"{name} wrote more than .* while extracting.*max_ratio=100"):
        extract_archive(archive, out)
    assert list(out.iterdir()) == []


def test_the_default_caps_leave_room_for_the_real_archives():
    cub_extracted = 1.2 * 2**30  # CUB_200_2011.tgz: ~1.1 GiB compressed
    cifar100_ratio = 178 / 161  # MiB extracted / compressed
    assert 4 * cub_extracted <= download_module.DEFAULT_MAX_BYTES
    assert 20 * cifar100_ratio <= download_module.DEFAULT_MAX_RATIO


def test_a_truncated_archive_is_named(tmp_path):
    payload = hashlib.sha256(b"y").digest() * (1 << 14)
    archive = _tar_of(tmp_path / "cut.tar.gz", {f"top/{i}.bin": payload for i in range(4)})
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"cut\.tar\.gz is truncated or damaged.*download it again") as caught:
        extract_archive(archive, out)
    assert isinstance(caught.value, download_module.CorruptArchiveError)
    assert list(out.iterdir()) == []


def _local_cifar(tmp_path: Path, monkeypatch) -> Path:
    """Point CIFAR10DataModule at a tarball on disk (file:// URL, its real sha256); return the archive."""
    written = write_cifar(tmp_path / "server" / "build")
    archive = write_cifar_tarball(written["folder"], tmp_path / "server" / "cifar-10-python.tar.gz")
    monkeypatch.setattr(CIFAR10DataModule, "url", archive.as_uri())
    monkeypatch.setattr(CIFAR10DataModule, "sha256", hashlib.sha256(archive.read_bytes()).hexdigest())
    return archive


def _leave_leftovers_of_a_killed_run(root: Path) -> list[Path]:
    """What a SIGKILL leaves: a hidden partial download, a half-filled staging folder (named as mkstemp/mkdtemp do)."""
    part = root / ".cifar-10-python.tar.gz.k2j3h4q9.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(b"\x1f\x8b" + bytes(4096))
    staging = root / ".extracting-a1b2c3d4" / "cifar-10-batches-py"
    staging.mkdir(parents=True)
    (staging / "data_batch_1").write_bytes(bytes(4096))
    return [part, staging.parent]


def test_leftovers_of_a_killed_download_and_extraction_are_removed_on_the_next_run(tmp_path, monkeypatch):
    _local_cifar(tmp_path, monkeypatch)
    root = tmp_path / "data"
    leftovers = _leave_leftovers_of_a_killed_run(root)
    dm = CIFAR10DataModule(root=str(root), download=True, num_workers=0)
    dm.prepare_data()
    assert not any(path.exists() for path in leftovers)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    dm.setup("test")
    # killed after the tree was moved into place: the next run finds the data and still cleans up
    leftovers = _leave_leftovers_of_a_killed_run(root)
    dm.prepare_data()
    assert not any(path.exists() for path in leftovers)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_a_live_download_is_waited_for_not_cleaned_up(tmp_path):
    source = tmp_path / "server" / "data.bin"
    source.parent.mkdir()
    source.write_bytes(b"payload")
    digest = hashlib.sha256(b"payload").hexdigest()
    folder = tmp_path / "dl"
    folder.mkdir()
    done = threading.Event()
    with folder_lock.folder_lock(folder):  # another process is writing into the folder
        live = folder / ".data.bin.live1234.part"
        live.write_bytes(b"pay")
        worker = threading.Thread(
            target=lambda: (download_file(source.as_uri(), folder / "data.bin", digest), done.set())
        )
        worker.start()
        time.sleep(0.5)
        assert not done.is_set() and live.exists()  # it waits; the live partial file is untouched
        live.unlink()  # the other process finishes
    worker.join(10)
    assert done.is_set() and sorted(p.name for p in folder.iterdir()) == ["data.bin"]


class _Stalled(io.BytesIO):
    def read(self, size=-1):
        raise TimeoutError("The read operation timed out")


def _http_404(url, timeout):
    raise urllib.error.HTTPError(url, 404, "Not Found", Message(), None)


def _unreachable(url, timeout):
    raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))


@pytest.mark.parametrize(
    ("urlopen", "message"),
    [
        (_http_404, r"answered HTTP 404 \(Not Found\)"),
        (_unreachable, r"could not reach the server \(.*Connection refused\)"),
        (lambda url, timeout: _Stalled(b""), r"server sent nothing for 7\.5 s.*download_timeout"),
        (lambda url, timeout: (_ for _ in ()).throw(urllib.error.URLError(TimeoutError("timed out"))), r"for 7\.5 s"),
    ],
)
def test_http_errors_and_stalls_are_named_and_leave_nothing(tmp_path, monkeypatch, urlopen, message):
    monkeypatch.setattr(download_module.urllib.request, "urlopen", urlopen)
    url = "https://example.invalid/cifar.tar.gz"
    destination = tmp_path / "dl" / "cifar.tar.gz"
    pattern = rf"(?s)Downloading {url} .*{message}.*sha256 is {'4' * 64}.*{destination}"
    with pytest.raises(OSError, match=pattern) as caught:
        download_file(url, destination, sha256="4" * 64, timeout=7.5)
    assert isinstance(caught.value, download_module.DownloadError)
    assert list(destination.parent.iterdir()) == []


def test_download_timeout_is_passed_from_the_datamodule(tmp_path, monkeypatch):
    archive = _local_cifar(tmp_path, monkeypatch)
    seen = []
    real_urlopen = download_module.urllib.request.urlopen

    def recording_urlopen(url, timeout):
        seen.append(timeout)
        return real_urlopen(url, timeout=timeout)

    monkeypatch.setattr(download_module.urllib.request, "urlopen", recording_urlopen)
    dm = CIFAR10DataModule(root=str(tmp_path / "data"), download=True, download_timeout=300.0, num_workers=0)
    dm.prepare_data()
    assert seen == [300.0] and (tmp_path / "data" / archive.name).is_file()
    assert dm.hparams.download_timeout == 300.0
    with pytest.raises(ValueError, match="download_timeout must be positive"):
        CIFAR10DataModule(root=str(tmp_path), download_timeout=0)
