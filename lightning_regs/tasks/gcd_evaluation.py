"""``GCDEvaluationRows``: the rows GCD accuracy is scored on, gathered from every process by torchmetrics."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from typing_extensions import override

from lightning_regs.distributed import unique_by_index

__all__ = ["GCDEvaluationRows"]


class GCDEvaluationRows(Metric):
    """Each evaluated sample's ``index``, predicted cluster and real class, one row per ``index`` over all processes.

    ``update(index, prediction, truth)`` keeps the rows (``(N,)`` int64 each) where they are; ``compute()`` gathers
    them from every process in rank order (states concatenated, ``dist_reduce_fx="cat"``) and keeps the first row of
    each ``index`` (``DistributedSampler`` pads the last batches with repeated samples), sorted by ``index``: the
    rows one process would have seen. The states are not saved in checkpoints (``persistent=False``, as every
    torchmetrics state by default): they live for one evaluation epoch.

    Example::

        >>> rows = GCDEvaluationRows()
        >>> rows.update(torch.tensor([2, 0, 2]), torch.tensor([1, 0, 1]), torch.tensor([1, 1, 1]))
        >>> [part.tolist() for part in rows.compute()], rows.num_rows
        ([[0, 2], [0, 1], [1, 1]], 3)
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    index: list[torch.Tensor]
    prediction: list[torch.Tensor]
    truth: list[torch.Tensor]

    def __init__(self) -> None:
        super().__init__()
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("prediction", default=[], dist_reduce_fx="cat")
        self.add_state("truth", default=[], dist_reduce_fx="cat")

    @property
    def num_rows(self) -> int:
        """Rows this process has added since the last ``reset`` (before any deduplication)."""
        return sum(len(part) for part in self.index)

    @override
    def update(self, index: torch.Tensor, prediction: torch.Tensor, truth: torch.Tensor) -> None:
        self.index.append(index)
        self.prediction.append(prediction)
        self.truth.append(truth)

    def add_nothing(self, device: torch.device) -> None:
        """Add zero rows, so that a process that evaluated no batch still takes part in ``compute``'s gather."""
        empty = torch.zeros(0, dtype=torch.long, device=device)
        self.update(empty, empty, empty)

    @override
    def compute(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(index, prediction, truth)``: one row per ``index``, the first seen in rank order, sorted by ``index``."""
        index, prediction, truth = (dim_zero_cat(state) for state in (self.index, self.prediction, self.truth))
        return unique_by_index(index, prediction, truth)
