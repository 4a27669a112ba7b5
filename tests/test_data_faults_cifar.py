"""Fault injection on CIFAR batch files: allocation bombs through allowed globals, empty and odd batches.

The bombs are hand-written pickles of about 100 bytes that use only what an official batch uses
(numpy's array reconstruction, ``numpy.ndarray``, ``numpy.dtype``) or plain pickle opcodes, and ask
for a 1 TiB allocation. Before the fix each ended in a bare ``MemoryError`` that named no file.
"""

from __future__ import annotations

import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from lightning_regs.datamodules.cifar import CIFAR10DataModule, load_cifar_pickle
from tests.helpers.fake_datasets_vision import dump_py2, write_cifar

TIB = 1 << 40


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _long(value: int) -> bytes:
    data = value.to_bytes((value.bit_length() + 8) // 8, "little")
    return b"\x8a" + bytes([len(data)]) + data  # LONG1


def _str(data: bytes) -> bytes:
    return b"U" + bytes([len(data)]) + data  # SHORT_BINSTRING, as Python 2 wrote it


RECONSTRUCT = _global("numpy.core.multiarray", "_reconstruct") + _global("numpy", "ndarray")


def _dtype(code: bytes) -> bytes:
    return _global("numpy", "dtype") + _str(code) + b"\x89\x88\x87R"  # dtype(code, False, True)


def _in_a_batch(value: bytes) -> bytes:
    return b"\x80\x02}" + _str(b"data") + value + b"s."  # {"data": value}


BOMBS = {
    # _reconstruct(ndarray, (2**40,), "b"): numpy allocates the array before any state is set
    "reconstruct_shape": _in_a_batch(RECONSTRUCT + _long(TIB) + b"\x85" + _str(b"b") + b"\x87R"),
    # an empty array, then BUILD with an object dtype and 2**37 elements: numpy allocates 1 TiB of pointers
    "object_state": _in_a_batch(
        RECONSTRUCT
        + b"K\x00\x85"
        + _str(b"b")
        + b"\x87R"
        + b"(K\x01"
        + _long(TIB >> 3)
        + b"\x85"
        + _dtype(b"O8")
        + b"\x89]tb"
    ),
    # a void dtype whose state sets a 1 TiB item size, used for a one-element array
    "void_itemsize": _in_a_batch(
        RECONSTRUCT
        + b"K\x01\x85"
        + _dtype(b"V8")
        + b"(K\x03"
        + _str(b"|")
        + b"NNN"
        + _long(TIB)
        + b"K\x01K\x00tb"
        + b"\x87R"
    ),
    # plain pickle: BINBYTES8 announcing 1 TiB (the unpickler allocates before reading)
    "counted_bytes": b"\x80\x04\x8e" + struct.pack("<Q", TIB) + b"xx.",
    # plain pickle: LONG_BINPUT at index 2**31 (the unpickler grows its memo table to fit)
    "memo_index": b"\x80\x02}r" + struct.pack("<I", 1 << 31) + b".",
}


@pytest.mark.parametrize("bomb", BOMBS)
def test_an_allocation_bomb_is_refused_with_the_file_named(tmp_path, bomb):
    path = tmp_path / "data_batch_1"
    path.write_bytes(BOMBS[bomb])
    assert path.stat().st_size < 120
    with pytest.raises(pickle.UnpicklingError, match=re.escape(str(path))):
        load_cifar_pickle(path)


def test_the_official_format_still_loads_exactly(tmp_path):
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    dump_py2({"data": data, "labels": [3, 1], "batch_label": "training batch 1 of 5"}, tmp_path / "batch")
    content = load_cifar_pickle(tmp_path / "batch")
    assert content["labels"] == [3, 1] and content["batch_label"] == "training batch 1 of 5"
    assert type(content["data"]) is np.ndarray and content["data"].dtype == np.uint8
    assert np.array_equal(content["data"], data) and content["data"].flags.writeable
    fortran = np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4))
    dump_py2({"x": fortran, "y": np.float32(2.5) * np.ones(3, np.float32)}, tmp_path / "other")
    other = load_cifar_pickle(tmp_path / "other")
    assert np.array_equal(other["x"], fortran) and other["y"].tolist() == [2.5] * 3


def _rewrite(path: Path, **changes) -> None:
    content = load_cifar_pickle(path)
    content.update(changes)
    dump_py2(content, path)


def test_an_empty_batch_file_is_named(tmp_path):
    written = write_cifar(tmp_path)
    (written["folder"] / "data_batch_2").write_bytes(b"")
    with pytest.raises(pickle.UnpicklingError, match=r"data_batch_2 is empty \(0 bytes\).*extract the tarball again"):
        CIFAR10DataModule(root=str(tmp_path), num_workers=0).setup("fit")


def test_a_truncated_batch_file_is_named(tmp_path):
    written = write_cifar(tmp_path)
    path = written["folder"] / "test_batch"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(pickle.UnpicklingError, match=r"test_batch.*truncated, damaged or not an official CIFAR batch"):
        CIFAR10DataModule(root=str(tmp_path), num_workers=0).setup("fit")


@pytest.mark.parametrize("labels", [[0.9, 1.7, 0, 1, 2, 3], np.array([0.9, 1.7, 0, 1, 2, 3]), ["1"] * 6, [True] * 6])
def test_labels_that_are_not_integers_are_refused_not_truncated(tmp_path, labels):
    written = write_cifar(tmp_path)
    _rewrite(written["folder"] / "data_batch_4", labels=labels)
    with pytest.raises(ValueError, match=r"data_batch_4: 'labels' must be integer class ids, got .* \(e\.g\. "):
        CIFAR10DataModule(root=str(tmp_path), num_workers=0).setup("fit")


def test_a_batch_with_no_images_is_refused(tmp_path):
    written = write_cifar(tmp_path)
    _rewrite(written["folder"] / "data_batch_5", data=np.zeros((0, 3072), np.uint8), labels=[])
    with pytest.raises(ValueError, match=r"data_batch_5 holds no images"):
        CIFAR10DataModule(root=str(tmp_path), num_workers=0).setup("fit")
