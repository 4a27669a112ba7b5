"""The CIFAR unpickler bounds what it returns, not only what it allocates (issue 22).

A pickle's memo lets a list appear many times in a list that appears many times: a batch file of a
few hundred bytes describes a structure that any walk of it (the loader's own, ``np.asarray`` of the
labels) expands tenfold per level. Before the fix these loaded (the 6-level ones taking a second,
each further level ten times more). Now a container met twice (a shared reference, or a cycle), a
nesting deeper than a CIFAR batch has, or leaves repeated past the file's length are a named
``SharedReferenceError`` (a ``pickle.UnpicklingError``) naming the file, refused in milliseconds;
real-format batches (Python 2 opcodes, as the official files) still load.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lightning_regs.datamodules.cifar import CIFAR10DataModule, SharedReferenceError, load_cifar_pickle
from tests.helpers.fake_datasets_vision import dump_py2, write_cifar

FAST = 0.5  # seconds: a refused file is refused without walking its expansion


def _chain(depth: int, width: int, make) -> Any:
    """``depth`` levels, each holding the level below ``width`` times (one shared object per level)."""
    value: Any = [7]
    for level in range(depth):
        value = make(value, width, level)
    return value


SHAPES = {
    "lists": lambda inner, width, level: [inner] * width,
    "tuples": lambda inner, width, level: (inner,) * width,
    "dicts": lambda inner, width, level: {f"k{i}": inner for i in range(width)},
    "mixed": lambda inner, width, level: ([inner] * width, (inner,) * width, {"a": inner, "b": inner})[level % 3],
    "two-wide": lambda inner, width, level: [inner, inner],
}


def _batch(shape: str, depth: int = 6, width: int = 10, key: str = "labels") -> dict[str, Any]:
    return {"batch_label": "training batch 1 of 5", key: _chain(depth, width, SHAPES[shape])}


PROTOCOLS = {
    "py2": dump_py2,  # as the official files: BINPUT/BINGET
    "protocol0": lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=0)),  # PUT/GET (text)
    "protocol2": lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=2)),
    "protocol4": lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=4)),  # MEMOIZE/BINGET
}
GETS = {"GET", "BINGET", "LONG_BINGET"}


def _write(tmp_path: Path, obj: Any, protocol: str = "py2") -> Path:
    path = tmp_path / "data_batch_1"
    PROTOCOLS[protocol](obj, path)
    return path


def _refused_fast(path: Path, words: str) -> SharedReferenceError:
    start = time.perf_counter()
    with pytest.raises(
        pickle.UnpicklingError, match=rf"{re.escape(str(path))}: .*{words}.*delete the folder"
    ) as caught:
        load_cifar_pickle(path)
    assert time.perf_counter() - start < FAST
    assert isinstance(caught.value, SharedReferenceError)
    return caught.value


def _opcodes(path: Path) -> set[str]:
    return {opcode.name for opcode, _, _ in pickletools.genops(path.read_bytes())}


@pytest.mark.fault(area="security", outcome="refused")
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("shape", SHAPES)
def test_shared_references_are_refused_quickly(tmp_path, shape, protocol):
    path = _write(tmp_path, _batch(shape), protocol)
    assert path.stat().st_size < 1000 and _opcodes(path) & GETS  # a tiny file that reuses memoized containers
    _refused_fast(path, r"more than once \(a shared reference or a cycle\)")


@pytest.mark.fault(area="security", outcome="refused")
@pytest.mark.parametrize("depth", [2, 4, 6])
def test_shared_references_are_refused_at_every_depth(tmp_path, depth):
    path = _write(tmp_path, _batch("lists", depth=depth, width=3))
    _refused_fast(path, r"holds a list more than once")


@pytest.mark.fault(area="security", outcome="refused")
def test_a_shared_reference_through_a_long_memo_index_is_refused(tmp_path):
    batch = {"filenames": [f"img_{i}.png" for i in range(300)], **_batch("lists")}  # memo indices past 255
    path = _write(tmp_path, batch)
    assert "LONG_BINGET" in _opcodes(path)
    _refused_fast(path, r"more than once")


@pytest.mark.fault(area="security", outcome="refused")
@pytest.mark.parametrize("kind", ["list", "dict"])
def test_a_container_that_holds_itself_is_refused(tmp_path, kind):
    cycle: Any = [] if kind == "list" else {}
    if kind == "list":
        cycle.append(cycle)
    else:
        cycle["self"] = cycle
    path = _write(tmp_path, {"labels": cycle})
    _refused_fast(path, rf"holds a {kind} more than once \(a shared reference or a cycle\)")


@pytest.mark.fault(area="security", outcome="refused")
@pytest.mark.parametrize("depth", [9, 200])
def test_nesting_deeper_than_a_cifar_batch_is_refused(tmp_path, depth):
    path = _write(tmp_path, {"labels": _chain(depth, 1, SHAPES["lists"])})
    _refused_fast(path, r"nests containers more than 8 deep")


@pytest.mark.fault(area="security", outcome="refused")
def test_a_long_string_repeated_through_the_memo_is_refused(tmp_path):
    name = "x" * 200
    path = _write(tmp_path, {"filenames": [name] * 5000})  # ~10 KB on disk, 1 MB of strings once expanded
    _refused_fast(path, r"expands to more than [\d,]+ elements and bytes, more than its file holds")


@pytest.mark.fault(area="security", outcome="refused")
def test_an_array_repeated_through_the_memo_is_refused(tmp_path):
    array = np.zeros(4000, dtype=np.uint8)
    path = _write(tmp_path, {"data": [array] * 500})  # ~5 KB on disk, 2 MB of arrays once expanded
    _refused_fast(path, r"expands to more than")


@pytest.mark.fault(area="security", outcome="handled")
@pytest.mark.parametrize("num_classes", [10, 100])
def test_real_format_batches_still_load(tmp_path, num_classes):
    written = write_cifar(tmp_path, num_classes=num_classes)
    files = sorted(p for p in written["folder"].iterdir())
    loaded = {p.name: load_cifar_pickle(p) for p in files}
    assert len(loaded) == (3 if num_classes == 100 else 7)
    test = loaded["test" if num_classes == 100 else "test_batch"]
    assert test["fine_labels" if num_classes == 100 else "labels"] == written["test_labels"]
    images = test["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(images, written["test_images"])


@pytest.mark.fault(area="security", outcome="handled")
def test_a_datamodule_over_real_format_batches_sets_up(tmp_path):
    written = write_cifar(tmp_path)
    dm = CIFAR10DataModule(root=str(tmp_path), num_workers=0)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == len(written["train_labels"]) and dm.class_names == tuple(written["class_names"])


@pytest.mark.fault(area="security", outcome="handled")
def test_short_strings_shared_through_the_memo_stay_within_the_slack(tmp_path):
    label = "cat"  # Python 2 interned short strings: a pickler may write one and refer to it again
    path = _write(tmp_path, {"label_names": [label] * 100, "num_vis": 3072})
    assert "BINGET" in _opcodes(path)
    assert load_cifar_pickle(path)["label_names"] == ["cat"] * 100


@pytest.mark.fault(area="security", outcome="handled")
def test_empty_containers_met_twice_are_not_shared_references(tmp_path):
    path = _write(tmp_path, {"coords": [(), (), ()], "labels": [[], []]})
    assert load_cifar_pickle(path) == {"coords": [(), (), ()], "labels": [[], []]}
