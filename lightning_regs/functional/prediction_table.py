"""A per-sample table of predicted class probabilities, dense or top-k, for methods that remember them."""

from __future__ import annotations

from typing import Any, Literal

import torch

__all__ = ["PredictionTable", "Storage"]

Storage = Literal["float32", "float16"]
_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class PredictionTable:
    """Class probabilities for ``num_samples`` samples, read and written by sample index, vectorized.

    Dense storage keeps all ``C`` probabilities per sample (``4·C`` bytes in float32, ``2·C`` in
    float16). With ``top_k = k`` only the ``k`` largest probabilities and their class ids are kept,
    renormalized to sum to one: the mass outside the top ``k`` (``m``) is spread over the kept classes
    in proportion, and every other class reads back as zero, so a row read back differs from the
    written one by exactly ``2·m`` in L1. A bool ``seen`` marks rows that were ever written.

    Args:
        num_samples: rows (the training set's size).
        num_classes: classes ``C``.
        storage: ``float32`` or ``float16`` values.
        top_k: keep only the ``k`` largest probabilities per row; ``None`` keeps all.
        device: where the table lives.

    Example::

        >>> table = PredictionTable(4, 3, top_k=2)
        >>> table.write(torch.tensor([2]), torch.tensor([[0.3, 0.1, 0.6]]))
        >>> [round(p, 4) for p in table.read(torch.tensor([2]))[0].tolist()], table.seen.tolist()
        ([0.3333, 0.0, 0.6667], [False, False, True, False])
    """

    def __init__(
        self,
        num_samples: int,
        num_classes: int,
        storage: Storage = "float32",
        top_k: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if storage not in _DTYPES:
            raise ValueError(f"storage must be one of {sorted(_DTYPES)}, got {storage!r}.")
        if top_k is not None and not 1 <= top_k <= num_classes:
            raise ValueError(f"top_k must lie in [1, num_classes={num_classes}] or be None, got {top_k}.")
        if num_samples < 1 or num_classes < 2:
            raise ValueError(f"Need num_samples >= 1 and num_classes >= 2, got {num_samples} and {num_classes}.")
        self.num_samples = int(num_samples)
        self.num_classes = int(num_classes)
        self.storage = storage
        self.top_k = top_k
        dtype = _DTYPES[storage]
        self.seen = torch.zeros(num_samples, dtype=torch.bool, device=device)
        if top_k is None:
            self.values = torch.zeros(num_samples, num_classes, dtype=dtype, device=device)
            self.classes: torch.Tensor | None = None
        else:
            index_dtype = torch.int16 if num_classes <= torch.iinfo(torch.int16).max else torch.int32
            self.values = torch.zeros(num_samples, top_k, dtype=dtype, device=device)
            self.classes = torch.zeros(num_samples, top_k, dtype=index_dtype, device=device)

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def bytes_per_sample(self) -> int:
        """Bytes each sample costs: values, class ids (top-k) and the ``seen`` flag."""
        per_row = self.values[0].numel() * self.values.element_size() + 1
        if self.classes is not None:
            per_row += self.classes[0].numel() * self.classes.element_size()
        return per_row

    def to(self, device: torch.device | str) -> PredictionTable:
        """Move the table (in place) and return it."""
        self.seen = self.seen.to(device)
        self.values = self.values.to(device)
        if self.classes is not None:
            self.classes = self.classes.to(device)
        return self

    def read(self, index: torch.Tensor) -> torch.Tensor:
        """Dense float32 probabilities ``(len(index), C)`` of the rows ``index`` (zeros where never written)."""
        index = index.to(self.device)
        if self.classes is None:
            return self.values[index].float()
        dense = torch.zeros(len(index), self.num_classes, device=self.device)
        return dense.scatter_(1, self.classes[index].long(), self.values[index].float())

    def write(self, index: torch.Tensor, probabilities: torch.Tensor, deduplicate: bool = True) -> None:
        """Store ``probabilities`` ``(n, C)`` at rows ``index`` ``(n,)``.

        With ``deduplicate`` the first of repeated indices is kept (deterministic on every device); pass
        ``False`` to skip that work when ``index`` is known to hold no repeats.
        """
        rows = index.to(self.device)
        probabilities = probabilities.detach().to(self.device, torch.float32)
        if deduplicate:
            rows, first = _first_occurrences(rows)
            probabilities = probabilities[first]
        if self.classes is None:
            self.values[rows] = probabilities.to(self.values.dtype)
        else:
            values, classes = probabilities.topk(self.top_k, dim=1)
            values = values / values.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
            self.values[rows] = values.to(self.values.dtype)
            self.classes[rows] = classes.to(self.classes.dtype)
        self.seen[rows] = True

    def state_dict(self) -> dict[str, Any]:
        """Tensors (on the CPU) and builtins only: loadable with ``torch.load(weights_only=True)``."""
        state = {
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "storage": self.storage,
            "top_k": self.top_k,
            "seen": self.seen.cpu(),
            "values": self.values.cpu(),
        }
        if self.classes is not None:
            state["classes"] = self.classes.cpu()
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device | str = "cpu") -> PredictionTable:
        """Rebuild a table saved with :meth:`state_dict`."""
        table = cls(state["num_samples"], state["num_classes"], state["storage"], state["top_k"], device=device)
        table.seen.copy_(state["seen"])
        table.values.copy_(state["values"])
        if table.classes is not None:
            table.classes.copy_(state["classes"])
        return table


def _first_occurrences(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct values of ``index`` and the position of each one's first occurrence."""
    unique, inverse = torch.unique(index, return_inverse=True)
    positions = torch.arange(len(index), device=index.device)
    first = torch.full((len(unique),), len(index), dtype=positions.dtype, device=index.device)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return unique, first
