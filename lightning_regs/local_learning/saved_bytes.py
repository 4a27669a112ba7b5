"""Count the bytes of tensors autograd saves for backward: a deterministic, device-free memory measure."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType

import torch
from torch import nn

from lightning_regs._compat import storage_base

__all__ = ["SavedTensorMeter"]


class _Packed:
    """What autograd holds instead of a saved tensor; releasing it releases the count."""

    __slots__ = ("key", "meter", "tensor")

    def __init__(self, tensor: torch.Tensor, meter: SavedTensorMeter, key: int) -> None:
        self.tensor = tensor
        self.meter = meter
        self.key = key

    def __del__(self) -> None:
        self.meter._release(self.key)


class SavedTensorMeter:
    """Live and peak bytes of the activations saved for backward, one count per storage.

    Inside the ``with`` block every tensor autograd saves is counted once per underlying storage (views
    and repeated saves of one tensor count once) until autograd frees its last reference to it.
    Parameters (and views of them) and the buffers of ``exclude`` are persistent state, not
    activations, and are not counted.

    Args:
        exclude: modules whose parameters and buffers are left out.

    Example::

        >>> layer = nn.Linear(256, 256)
        >>> meter = SavedTensorMeter(exclude=[layer])
        >>> with meter:
        ...     loss = layer(torch.randn(8, 256, requires_grad=True)).relu().sum()
        ...     loss.backward()
        >>> meter.peak_bytes, meter.live_bytes  # the input and the ReLU output, 8x256 float32 each
        (16384, 0)
    """

    def __init__(self, exclude: Iterable[nn.Module] = ()) -> None:
        self._excluded = {
            _local(t).untyped_storage().data_ptr()
            for module in exclude
            for t in [*module.parameters(), *module.buffers()]
        }
        self.sizes: dict[int, int] = {}
        self._counts: dict[int, int] = {}
        self._record: set[int] = set()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None

    def _pack(self, tensor: torch.Tensor) -> _Packed | torch.Tensor:
        base = storage_base(tensor)
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self._excluded or isinstance(base, nn.Parameter):
            return tensor
        if self._counts.get(key, 0) == 0:
            self._counts[key] = 0
            self.sizes[key] = storage.nbytes()
            self.live_bytes += self.sizes[key]
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self._counts[key] += 1
        self._record.add(key)
        return _Packed(tensor, self, key)

    @staticmethod
    def _unpack(packed: _Packed | torch.Tensor) -> torch.Tensor:
        return packed.tensor if isinstance(packed, _Packed) else packed

    def _release(self, key: int) -> None:
        self._counts[key] -= 1
        if self._counts[key] == 0:
            self.live_bytes -= self.sizes[key]

    def reset_peak(self) -> None:
        """Start a new peak from the bytes alive now."""
        self.peak_bytes = self.live_bytes

    def reset_record(self) -> None:
        """Forget which storages were saved so far (see :meth:`recorded`)."""
        self._record = set()

    def recorded(self) -> set[int]:
        """Keys of the storages saved since the last :meth:`reset_record` (sizes in :attr:`sizes`)."""
        return set(self._record)

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._hooks is not None
        self._hooks.__exit__(exc_type, exc, tb)
        self._hooks = None


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded (DTensor) parameter, whose storage is the one a forward reads."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor
