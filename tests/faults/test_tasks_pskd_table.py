"""A restored PS-KD table is checked row by row: every written row a distribution, the right shape for the run."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_regs.callbacks import ProgressiveSelfKD
from lightning_regs.datamodules import IndexedDataset
from lightning_regs.functional import PredictionTable
from lightning_regs.functional.prediction_table import check_table_state
from lightning_regs.models import MLP
from lightning_regs.tasks import ImageClassifier
from tests.helpers.trainers import QUIET


def _state(rows: int = 5, classes: int = 3, top_k: int | None = None, storage: str = "float32") -> dict:
    table = PredictionTable(rows, classes, storage=storage, top_k=top_k)
    table.write(torch.arange(rows - 1), torch.softmax(torch.randn(rows - 1, classes), dim=1))  # the last row unwritten
    return {"alpha_T": 0.8, "total_epochs": 3, "table": table.state_dict(), "fingerprint": None}


ROW_FAULTS = {
    # a written row whose values each lie in [0, 1] but sum to 3 (passed the old per-value check)
    "sum-3": (lambda t: t["values"].__setitem__(2, torch.tensor([0.999, 0.999, 0.999])), r"row 2, .*sum 2\.997"),
    "sum-0.5": (lambda t: t["values"].__setitem__(1, torch.tensor([0.2, 0.2, 0.1])), r"row 1, .*sum 0\.5"),
    "sum-4.2": (lambda t: t["values"].__setitem__(0, torch.tensor([1.4, 1.4, 1.4])), r"row 0, .*sum 4\.2"),
    "negative": (lambda t: t["values"].__setitem__(3, torch.tensor([-0.5, 1.0, 0.5])), r"row 3, \[-0\.5, 1\.0, 0\.5\]"),
    "nan": (lambda t: t["values"][1].__setitem__(0, float("nan")), r"row 1, \[nan"),
    "inf": (lambda t: t["values"][1].__setitem__(0, float("inf")), r"row 1, \[inf"),
    "unwritten-not-zero": (
        lambda t: t["values"].__setitem__(4, torch.tensor([0.2, 0.3, 0.5])),
        r"row 4, .*never written",
    ),
    "wrong-width": (
        lambda t: t.__setitem__("values", torch.full((5, 4), 0.25)),
        r"'values' has shape \(5, 4\).*needs \(5, 3\)",
    ),
    "wrong-row-count": (
        lambda t: t.__setitem__("values", torch.full((4, 3), 1 / 3)),
        r"'values' has shape \(4, 3\).*needs \(5, 3\)",
    ),
    "seen-wrong-rows": (lambda t: t.__setitem__("seen", torch.ones(6, dtype=torch.bool)), r"'seen' has shape \(6,\)"),
}


@pytest.mark.fault(area="tasks", outcome="refused")
@pytest.mark.parametrize("fault", list(ROW_FAULTS))
def test_a_restored_table_whose_rows_are_not_distributions_is_a_named_error(fault: str) -> None:
    state = _state()
    corrupt, words = ROW_FAULTS[fault]
    corrupt(state["table"])
    with pytest.raises(ValueError, match=words + r".*resume from a checkpoint of this run, or start a new run"):
        ProgressiveSelfKD().load_state_dict(state)


@pytest.mark.fault(area="tasks", outcome="refused")
def test_a_top_k_row_that_does_not_sum_to_one_is_a_named_error() -> None:
    state = _state(top_k=2)
    state["table"]["values"][0] = torch.tensor([0.9, 0.9])
    with pytest.raises(ValueError, match=r"row 0, \[0\.9, 0\.9\] \(sum 1\.8"):
        check_table_state(state["table"])


@pytest.mark.fault(area="tasks", outcome="handled")
@pytest.mark.parametrize(("top_k", "storage"), [(None, "float32"), (None, "float16"), (2, "float32"), (2, "float16")])
def test_a_table_of_distributions_is_accepted(top_k, storage) -> None:
    state = _state(rows=50, classes=100 if top_k is None else 3, top_k=top_k, storage=storage)
    callback = ProgressiveSelfKD()
    callback.load_state_dict(state)
    assert callback.total_epochs == 3


def _data(n: int = 16) -> DataLoader:
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return DataLoader(IndexedDataset(TensorDataset(x, torch.arange(n) % 10)), batch_size=8)


@pytest.mark.fault(area="tasks", outcome="refused")
@pytest.mark.parametrize(("rows", "classes", "words"), [
    (16, 7, r"table has 7 classes per row but the model has 10"),
    (20, 10, r"table has 20 rows but the training set has 16 samples"),
])  # fmt: skip
def test_a_restored_table_of_another_shape_than_the_run_is_a_named_error(rows: int, classes: int, words: str) -> None:
    table = PredictionTable(rows, classes)
    table.write(torch.arange(rows), torch.full((rows, classes), 1 / classes))
    callback = ProgressiveSelfKD()
    callback.load_state_dict({"alpha_T": 0.8, "total_epochs": 2, "table": table.state_dict(), "fingerprint": None})
    task = ImageClassifier(MLP(in_features=64, num_classes=10, width=8, depth=2), 10)
    with pytest.raises(ValueError, match=words):
        Trainer(max_epochs=2, callbacks=[callback], **QUIET).fit(task, _data())
