"""The restricted unpickler CIFAR batches load through: numpy arrays only, allocations bounded by the file's size.

CIFAR ships its batches as Python pickles; unpickling untrusted bytes can run any code, so
:func:`load_cifar_pickle` reads them only after the sha256 check and through an unpickler that resolves no global but
numpy's array reconstruction, refuses shared references and deep nesting, and caps the expanded size.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SharedReferenceError", "load_cifar_pickle"]

_MEMO_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")
_PLAIN_DTYPE = re.compile(r"[biuf][1248]")  # bool, integers and floats: all a CIFAR batch holds
MALFORMED = (
    "The file is truncated, damaged or not an official CIFAR batch: delete the folder and extract the tarball again."
)


class _NdarrayGlobal:
    """What ``numpy.ndarray`` unpickles to: a marker that ``_reconstruct`` expects, never an array constructor."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise pickle.UnpicklingError("the pickle calls numpy.ndarray directly, which a CIFAR batch never does")


class _DtypeSpec:
    """What ``numpy.dtype(code, align, copy)`` unpickles to: a plain numeric type code and a byte order, not numpy's."""

    def __init__(self, code: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(code, str) or not _PLAIN_DTYPE.fullmatch(code):
            raise pickle.UnpicklingError(f"the dtype {code!r} is not a plain bool, integer or float type")
        self.code, self.byteorder = code, "="

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags); only the byte order may be set
        if not isinstance(state, tuple) or len(state) < 5 or state[1] not in "<>|=" or state[2:5] != (None,) * 3:
            raise pickle.UnpicklingError(f"the dtype state {state!r} is not that of a plain numeric type")
        self.byteorder = state[1] if state[1] in "<>" else "="

    def to_numpy(self) -> np.dtype:
        return np.dtype(self.code).newbyteorder(self.byteorder)


class _ArraySpec:
    """What ``_reconstruct(ndarray, ...)`` unpickles to: the array's shape, dtype and bytes, checked, no numpy object.

    numpy's own reconstruction allocates what the pickle asks for (shape and item size) before it
    sees any data; here the data must already be in the file, byte for byte, so no array can need
    more memory than the file's size.
    """

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # (version, shape, dtype, is_fortran, data)
        if not isinstance(state, tuple) or len(state) != 4:
            raise pickle.UnpicklingError("an array's state is not (shape, dtype, is_fortran, data)")
        shape, dtype, fortran, raw = state
        if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise pickle.UnpicklingError(f"an array's shape {shape!r} is not a tuple of sizes")
        if not isinstance(dtype, _DtypeSpec) or not isinstance(raw, bytes | str):
            raise pickle.UnpicklingError("an array's state lacks a plain numeric dtype or its raw bytes")
        raw = raw.encode("latin1") if isinstance(raw, str) else raw  # Python 2 strings arrive as latin-1 text
        dtype = dtype.to_numpy()
        needed = math.prod(shape) * dtype.itemsize
        if needed != len(raw):
            raise pickle.UnpicklingError(
                f"an array of shape {shape} and dtype {dtype} needs {needed:,} bytes but the file gives it {len(raw):,}"
            )
        self.array = np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C").copy()


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _ArraySpec:
    if subtype is not _NdarrayGlobal:
        raise pickle.UnpicklingError(f"numpy's _reconstruct is called with {subtype!r}, not numpy.ndarray")
    return _ArraySpec()  # shape and typecode are placeholders in numpy's own pickles; the state holds the real ones


# The official batches were pickled by Python 2 and only reference these globals; anything else is refused.
# None of them runs numpy code on the file's bytes: they build the checked stand-ins above.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NdarrayGlobal,
    ("numpy", "dtype"): _DtypeSpec,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle the global {module}.{name}: a CIFAR batch only references numpy's array "
                "reconstruction"
            ) from None


def _check_opcodes(data: bytes) -> None:
    """Refuse a pickle that would make the unpickler allocate more than the file holds, before it runs.

    The unpickler allocates what a counted opcode announces (``BINBYTES8``: up to 2**64 bytes) before
    reading it, and grows its memo table to the largest index put. ``pickletools.genops`` reads each
    announced length from the data (a length past the end fails), and memo indices must come in
    order, as every pickler writes them.
    """
    puts = 0
    for opcode, argument, position in pickletools.genops(data):
        if opcode.name in _MEMO_PUTS:
            if argument > puts:
                raise pickle.UnpicklingError(f"the memo index {argument} at byte {position} skips ahead of {puts}")
            puts += argument == puts
        elif opcode.name == "MEMOIZE":
            puts += 1
        elif opcode.name == "FRAME" and argument > len(data) - position:
            raise pickle.UnpicklingError(f"the frame at byte {position} announces {argument:,} bytes past the end")


_MAX_DEPTH = 8  # a CIFAR batch nests three deep: the dict, its lists, their strings
_SIZE_SLACK = 4096  # expanded size allowed beyond the file's length (a few shared short strings)


class SharedReferenceError(pickle.UnpicklingError):
    """A pickle whose result would expand beyond its file: a container reached twice (a shared reference, as a
    pickle memo makes them) or a cycle, nesting deeper than a CIFAR batch has, or leaves that add up to more than
    the file holds."""


class _Expansion:
    """Replaces array stand-ins by their arrays while bounding the result's expanded size and walk time.

    A pickle's memo lets one list appear many times, in lists that appear many times: 200 bytes can
    describe a structure whose walk (or ``np.asarray``) takes minutes and gigabytes. Without shared
    references every element costs at least a byte of the file, so the walk here visits every
    container once (a second visit is refused) and counts the expanded size (one per element, the
    length of each string, the bytes of each array, every time it appears) against the file's length.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.size, self.seen = limit, 0, set()

    def _take(self, count: int) -> None:
        self.size += count
        if self.size > self.limit:
            raise SharedReferenceError(
                f"the pickle expands to more than {self.limit:,} elements and bytes, more than its file holds: it "
                "repeats shared objects, which a CIFAR batch never does"
            )

    def __call__(self, value: Any, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise SharedReferenceError(f"the pickle nests containers more than {_MAX_DEPTH} deep (a CIFAR batch: 3)")
        if isinstance(value, _ArraySpec):
            if value.array is None:
                raise pickle.UnpicklingError("an array was created without its data")
            self._take(max(value.array.nbytes, 1))
            return value.array
        if isinstance(value, dict | list | tuple | set | frozenset):
            if value and id(value) in self.seen:  # empty containers cannot expand (and () is one shared object)
                raise SharedReferenceError(
                    f"the pickle holds a {type(value).__name__} more than once (a shared reference or a cycle), "
                    "which a CIFAR batch never does; walking it could expand it exponentially"
                )
            self.seen.add(id(value))
            self._take(1)
            if isinstance(value, dict):
                return {self(key, depth + 1): self(item, depth + 1) for key, item in value.items()}
            return type(value)(self(item, depth + 1) for item in value)
        self._take(max(len(value), 1) if isinstance(value, str | bytes | bytearray) else 1)
        return value


def load_cifar_pickle(path: str | Path) -> dict[str, Any]:
    """Load one CIFAR batch or meta file through an unpickler that allows numpy arrays only.

    Allocations are bounded by the file's size: counted opcodes must fit in the file, and an array
    is built from exactly the bytes the file holds for it (plain bool, integer or float types only).
    So is what it returns: a container met twice (a shared reference through the pickle memo, or a
    cycle) is refused, and the expanded size (elements, string lengths, array bytes, counted every time
    they appear) may not pass the file's length, so no walk of the result can take longer than a
    read of the file.

    Raises:
        pickle.UnpicklingError: naming ``path``: the file is empty, truncated or damaged, references
            any other global (e.g. ``os.system``), or asks for more memory than it holds.
        SharedReferenceError: (a ``pickle.UnpicklingError``) naming ``path``: the result shares a
            container, nests deeper than a CIFAR batch, or expands beyond the file's length.
    """
    data = Path(path).read_bytes()
    if not data:
        raise pickle.UnpicklingError(f"{path} is empty (0 bytes), as a copy cut short leaves it. {MALFORMED}")
    try:
        _check_opcodes(data)
        loaded = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
        content = _Expansion(len(data) + _SIZE_SLACK)(loaded)
    except pickle.UnpicklingError as error:
        raise type(error)(f"{path}: {error}. {MALFORMED}") from None
    except Exception as error:  # whatever else malformed bytes raise (EOFError, ValueError, MemoryError, ...)
        raise pickle.UnpicklingError(
            f"{path} is not a readable CIFAR batch pickle ({type(error).__name__}: {error}). {MALFORMED}"
        ) from error
    if not isinstance(content, dict):
        raise pickle.UnpicklingError(f"{path} holds a {type(content).__name__}, not the dict of a CIFAR batch.")
    return content
