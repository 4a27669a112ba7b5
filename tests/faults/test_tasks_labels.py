"""Labels checked on every batch of every stage: a bad label at a later batch is a named error; ignore_index exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_regs.batch import IMAGE, TARGET
from lightning_regs.tasks import ImageClassifier
from tests.faults._tasks_helpers import CLASSIFIERS, batches, fit, make_task, num_classes

LATER = 2


def _bad_target(kind: str, case: str, target: torch.Tensor) -> tuple[torch.Tensor, str]:
    classes = num_classes(kind)
    ints = {"-100": -100, "-1": -1, "num_classes": classes, "huge": 10**9}
    if case in ints:
        bad = target.clone()
        bad[1] = ints[case]
        return bad, rf"batch {LATER} holds the label {ints[case]} \(row 1.* must lie in \[0, {classes - 1}\]"
    if case == "float":
        return target.float(), r"float class ids .* must be int64 \(cast them with \.long\(\)"
    return target[:, None], r"shape \(4, 1\); expected int64 class ids of shape \(4,\), one per row"


CASES = ["-100", "-1", "num_classes", "huge", "float", "wrong-shape"]


@pytest.mark.fault(area="tasks", outcome="refused")
@pytest.mark.parametrize("stage", ["train", "val"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", CLASSIFIERS)
def test_a_bad_label_at_a_later_batch_is_a_named_error(kind: str, case: str, stage: str) -> None:
    train, val = batches(kind), batches(kind, "val")
    data = train if stage == "train" else val
    target, words = _bad_target(kind, case, data[LATER][TARGET])
    data[LATER] = {**data[LATER], TARGET: target}
    with pytest.raises(ValueError, match=rf"{stage} batch {LATER} .*" + words.split(f"batch {LATER} ", 1)[-1]):
        fit(make_task(kind), train, val)


@pytest.mark.fault(area="tasks", outcome="handled")
@pytest.mark.parametrize("ignore", [-100, -1])
def test_ignore_index_leaves_exactly_those_rows_out_of_the_loss(ignore: int) -> None:
    task = make_task("image", ignore_index=ignore)
    batch = batches("image")[0]
    target = batch[TARGET].clone()
    target[[0, 2]] = ignore
    out = task.training_step({**batch, TARGET: target}, 0)
    expected = F.cross_entropy(out["logits"], target, ignore_index=ignore)
    torch.testing.assert_close(out["loss"].detach(), expected)


@pytest.mark.fault(area="tasks", outcome="handled")
def test_ignore_index_leaves_exactly_those_rows_out_of_the_validation_metrics() -> None:
    train, val = batches("image", n=1), batches("image", "val")
    marked = [{**b, TARGET: b[TARGET].clone()} for b in val]
    marked[LATER][TARGET][[0, 3]] = -100
    trainer, _ = fit(make_task("image", ignore_index=-100), train, marked)
    keep = torch.tensor([False, True, True, False])
    without = [*val]
    without[LATER] = {key: value[keep] for key, value in val[LATER].items()}
    reference, _ = fit(make_task("image", ignore_index=-100), train, without)
    for name in ("val/acc", "val/loss", "val/ece"):
        torch.testing.assert_close(trainer.callback_metrics[name], reference.callback_metrics[name])


@pytest.mark.fault(area="tasks", outcome="refused")
@pytest.mark.parametrize("kind", ["image", "grokking", "mil"])
def test_ignore_index_that_is_a_class_is_refused(kind: str) -> None:
    with pytest.raises(ValueError, match=r"ignore_index=1 is one of the .* classes.*Use a value outside"):
        make_task(kind, ignore_index=1)


@pytest.mark.fault(area="tasks", outcome="refused")
def test_local_learning_refuses_ignore_index() -> None:
    with pytest.raises(ValueError, match="ignore_index=-100 is not supported: the auxiliary heads"):
        make_task("local", ignore_index=-100)


def _soft(case: str) -> tuple[torch.Tensor, str]:
    target = torch.full((4, 10), 0.1)
    if case == "sum-4.2":
        target[1] = 0.42
        return target, r"row 1 is .* \(sum 4\.2\)"
    if case == "negative":
        target[1, :2] = torch.tensor([-0.1, 0.3])
        return target, r"row 1 is \[-0\.1, 0\.3"
    if case == "nan":
        target[1, 0] = float("nan")
        return target, r"row 1 is \[nan"
    if case == "wrong-width":
        return torch.full((4, 7), 1 / 7), r"soft targets of shape \(4, 7\); .* need shape \(4, 10\)"
    return torch.full((3, 10), 0.1), r"soft targets of shape \(3, 10\); .* need shape \(4, 10\)"


@pytest.mark.fault(area="tasks", outcome="refused")
@pytest.mark.parametrize("stage", ["train", "val"])
@pytest.mark.parametrize("case", ["sum-4.2", "negative", "nan", "wrong-width", "wrong-rows"])
@pytest.mark.parametrize("kind", ["image", "grokking"])
def test_soft_targets_that_are_not_distributions_are_a_named_error(kind: str, case: str, stage: str) -> None:
    target, words = _soft(case)
    batch = {IMAGE: torch.randn(4, 1, 8, 8), TARGET: target}
    task = make_task(kind)
    step = task.training_step if stage == "train" else task.validation_step
    with pytest.raises(ValueError, match=words):
        step(batch, 3)


@pytest.mark.fault(area="tasks", outcome="handled")
def test_soft_targets_that_are_distributions_train_as_before() -> None:
    task: ImageClassifier = make_task("image")
    target = torch.softmax(torch.randn(4, 10), dim=1)
    out = task.training_step({IMAGE: torch.randn(4, 1, 8, 8), TARGET: target}, 0)
    torch.testing.assert_close(out["loss"].detach(), F.cross_entropy(out["logits"], target))
