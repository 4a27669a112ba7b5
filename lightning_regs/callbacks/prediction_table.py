"""A per-sample table of predicted class probabilities, dense or top-k, for methods that remember them.

State, not an equation: it lives beside its user, :class:`~lightning_regs.callbacks.ProgressiveSelfKD`
(``lightning_regs.functional.PredictionTable`` re-exports it).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

__all__ = ["PredictionTable", "Storage", "check_table_state"]

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
        self._skipped = torch.zeros((), dtype=torch.long, device=device)
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
        self._skipped = self._skipped.to(device)
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

    def write(
        self,
        index: torch.Tensor,
        probabilities: torch.Tensor,
        deduplicate: bool = True,
        keep: Literal["first", "last"] = "first",
    ) -> None:
        """Store ``probabilities`` ``(n, C)`` at rows ``index`` ``(n,)``; rows that are not finite are not stored.

        A row with a NaN or inf (a diverged step, a corrupted input) keeps what it held, and is counted in
        :attr:`skipped_rows`, so one bad batch cannot poison the targets of later epochs.

        With ``deduplicate`` one of repeated indices is kept, the ``keep="first"`` or the ``"last"`` (what writing
        the rows one by one in order leaves), deterministically on every device; pass ``deduplicate=False`` to skip
        that work when ``index`` is known to hold no repeats.
        """
        rows = index.to(self.device)
        probabilities = probabilities.detach().to(self.device, torch.float32)
        if deduplicate:
            rows, kept_rows = _occurrences(rows, keep)
            probabilities = probabilities[kept_rows]
        # Rows that are not finite keep what they held, without a device sync: counted in a tensor, read on demand.
        finite = torch.isfinite(probabilities).all(dim=1)
        self._skipped = self._skipped.to(self.device) + (~finite).sum()
        if self.classes is None:
            kept = torch.where(finite[:, None], probabilities.to(self.values.dtype), self.values[rows])
            self.values[rows] = kept
        else:
            values, classes = probabilities.nan_to_num(0.0, 0.0, 0.0).topk(self.top_k, dim=1)
            values = values / values.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
            self.values[rows] = torch.where(finite[:, None], values.to(self.values.dtype), self.values[rows])
            self.classes[rows] = torch.where(finite[:, None], classes.to(self.classes.dtype), self.classes[rows])
        self.seen[rows] = self.seen[rows] | finite

    @property
    def skipped_rows(self) -> int:
        """How many written rows were not finite and so not stored, since the table was made (a device sync)."""
        return int(self._skipped)

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
        """Rebuild a table saved with :meth:`state_dict`, after checking every entry.

        Raises:
            ValueError: naming the entry that is missing or has the wrong type, dtype or shape, or values that
                are not finite probabilities (a checkpoint from another table, or a corrupted one).
        """
        check_table_state(state)
        table = cls(state["num_samples"], state["num_classes"], state["storage"], state["top_k"], device=device)
        table.seen.copy_(state["seen"])
        table.values.copy_(state["values"])
        if table.classes is not None:
            table.classes.copy_(state["classes"])
        return table


def check_table_state(state: Any) -> None:
    """Raise a ``ValueError`` that says what is wrong when ``state`` is not a :meth:`PredictionTable.state_dict`.

    Example::

        >>> check_table_state(PredictionTable(3, 2).state_dict())
        >>> state = PredictionTable(3, 2).state_dict(); state["values"] = torch.zeros(2)
        >>> check_table_state(state)
        Traceback (most recent call last):
        ...
        ValueError: The prediction table's 'values' has shape (2,); a table of 3 samples and 2 classes needs (3, 2). ...
    """
    fix = (
        "The checkpoint holds another table or was corrupted: resume from a checkpoint of this run, or start "
        "a new run (a fresh callback)."
    )
    if not isinstance(state, dict):
        raise ValueError(f"The prediction table's state is a {type(state).__name__}, not a dict. {fix}")
    missing = [key for key in ("num_samples", "num_classes", "storage", "top_k", "seen", "values") if key not in state]
    if missing:
        raise ValueError(f"The prediction table's state lacks {missing}. {fix}")
    n, c, k = state["num_samples"], state["num_classes"], state["top_k"]
    if not (isinstance(n, int) and n >= 1 and isinstance(c, int) and c >= 2 and (k is None or isinstance(k, int))):
        raise ValueError(f"The prediction table's sizes are num_samples={n!r}, num_classes={c!r}, top_k={k!r}. {fix}")
    if state["storage"] not in _DTYPES:
        raise ValueError(f"The prediction table's storage is {state['storage']!r}, not one of {sorted(_DTYPES)}. {fix}")
    width = c if k is None else k
    expected = {"seen": ((n,), (torch.bool,)), "values": ((n, width), (_DTYPES[state["storage"]],))}
    if k is not None:
        expected["classes"] = ((n, k), (torch.int16, torch.int32))
    for key, (shape, dtypes) in expected.items():
        value = state.get(key)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"The prediction table's {key!r} is a {type(value).__name__}, not a tensor. {fix}")
        if tuple(value.shape) != shape:
            raise ValueError(
                f"The prediction table's {key!r} has shape {tuple(value.shape)}; a table of {n} samples and {c} "
                f"classes needs {shape}. {fix}"
            )
        if value.dtype not in dtypes:
            raise ValueError(f"The prediction table's {key!r} has dtype {value.dtype}, expected {dtypes[0]}. {fix}")
    values = state["values"].float()
    # Every row written is a distribution (top-k rows are renormalized); rows never written are zeros.
    tol = 1e-2 if state["storage"] == "float16" else 1e-3
    sums = values.sum(dim=1)
    written = state["seen"]
    bad_rows = ~torch.isfinite(values).all(dim=1) | (values < 0).any(dim=1) | (values > 1 + tol).any(dim=1)
    bad_rows |= written & ((sums - 1).abs() > tol)
    bad_rows |= ~written & (values != 0).any(dim=1)
    if bool(bad_rows.any()):
        row = int(bad_rows.nonzero()[0, 0])
        shown = [round(v, 4) for v in values[row, :6].tolist()]
        raise ValueError(
            f"The prediction table holds {int(bad_rows.sum())} rows that are not probabilities (NaN, inf, < 0, > 1, or "
            f"a written row not summing to 1 within {tol:g}; an unwritten row not zero): the first is row {row}, "
            f"{shown}{' ...' if values.shape[1] > 6 else ''} (sum {float(sums[row]):.6g}, "
            f"{'written' if bool(written[row]) else 'never written'}). {fix}"
        )
    if k is not None and bool(((state["classes"] < 0) | (state["classes"] >= c)).any()):
        raise ValueError(f"The prediction table's class ids lie outside [0, {c}). {fix}")


def _occurrences(index: torch.Tensor, keep: Literal["first", "last"]) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct values of ``index`` and the position of each one's first (or last) occurrence."""
    if keep not in ("first", "last"):
        raise ValueError(f"keep must be 'first' or 'last', got {keep!r}.")
    unique, inverse = torch.unique(index, return_inverse=True)
    positions = torch.arange(len(index), device=index.device)
    start = len(index) if keep == "first" else -1
    chosen = torch.full((len(unique),), start, dtype=positions.dtype, device=index.device)
    chosen.scatter_reduce_(0, inverse, positions, reduce="amin" if keep == "first" else "amax")
    return unique, chosen
