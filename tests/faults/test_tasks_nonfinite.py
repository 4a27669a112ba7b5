"""Non-finite inputs and losses in every task: a named error, a counted skip, or metrics over the finite rows only."""

from __future__ import annotations

import pytest
import torch

from lightning_regs.batch import IMAGE
from lightning_regs.tasks import ImageClassifier, LossTerm
from tests.faults._tasks_helpers import BAD, TASKS, batches, fit, make_task, poke

LATER = 2  # a later batch (the last of three)


@pytest.mark.fault(area="tasks", outcome="refused")
@pytest.mark.parametrize("position", [0, LATER], ids=["first-batch", "later-batch"])
@pytest.mark.parametrize("value", list(BAD), ids=list(BAD))
@pytest.mark.parametrize("kind", TASKS)
def test_a_non_finite_training_input_is_a_named_error(kind: str, value: str, position: int) -> None:
    train = batches(kind)
    train[position] = poke(train[position], BAD[value])
    with pytest.raises(ValueError, match=rf"training step \d+ \(batch {position}\) has non-finite values in .*image.*"
                       r"check the data.*nonfinite='skip'"):  # fmt: skip
        fit(make_task(kind), train)


@pytest.mark.fault(area="tasks", outcome="handled")
@pytest.mark.parametrize("position", [0, LATER], ids=["first-batch", "later-batch"])
@pytest.mark.parametrize("value", list(BAD), ids=list(BAD))
@pytest.mark.parametrize("kind", TASKS)
def test_a_non_finite_validation_input_is_left_out_of_the_metrics_and_counted(
    kind: str, value: str, position: int
) -> None:
    train, val = batches(kind, n=1), batches(kind, "val")
    poked = [*val]
    poked[position] = poke(val[position], BAD[value])
    trainer, messages = fit(make_task(kind), train, poked)
    metrics = trainer.callback_metrics
    assert float(metrics["val/nonfinite_inputs"]) == 1.0
    assert sum(f"val batch {position} has 1 of 4 rows with non-finite inputs" in m for m in messages) == 1
    # the metric equals the one over the same batches without the bad row, and is finite
    clean = [*val]
    keep = torch.ones(4, dtype=torch.bool)
    keep[1] = False
    clean[position] = {key: tensor[keep] for key, tensor in val[position].items()}
    reference, _ = fit(make_task(kind), train, clean)
    name = "val/mse" if kind == "aggregate" else "val/acc"
    assert torch.isfinite(metrics[name])
    torch.testing.assert_close(metrics[name], reference.callback_metrics[name])
    if kind != "aggregate":
        torch.testing.assert_close(metrics["val/loss"], reference.callback_metrics["val/loss"])


def _weights(task) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in task.state_dict().items()}


@pytest.mark.fault(area="tasks", outcome="handled")
@pytest.mark.parametrize("value", ["nan", "+inf"])
@pytest.mark.parametrize("kind", TASKS)
def test_skip_mode_skips_exactly_the_bad_step(kind: str, value: str) -> None:
    train = batches(kind)
    bad = [*train]
    bad[1] = poke(train[1], BAD[value])
    skipped = make_task(kind, nonfinite="skip")
    trainer, messages = fit(skipped, bad)
    assert float(trainer.callback_metrics["train/skipped_nonfinite"]) == 1.0
    assert any("nonfinite='skip'): skipped training step" in m and "(batch 1)" in m for m in messages)
    without = make_task(kind, nonfinite="skip")
    fit(without, [train[0], train[2]])
    after, expected = _weights(skipped), _weights(without)
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    for name, value_ in expected.items():
        torch.testing.assert_close(after[name], value_, msg=name)


class NaNAtBatch(LossTerm):
    """A loss term that is NaN on training batch ``at`` (a diverged term, inputs finite)."""

    def __init__(self, at: int) -> None:
        super().__init__("blowup", 1.0)
        self.at, self.calls = at, 0

    def forward(self, outputs, batch):
        self.calls += 1
        value = outputs["logits"].sum() * 0.0
        return value + float("nan") if self.calls == self.at + 1 else value


@pytest.mark.fault(area="tasks", outcome="refused")
@pytest.mark.parametrize("position", [0, LATER], ids=["first-batch", "later-batch"])
def test_a_non_finite_loss_is_a_named_error(position: int) -> None:
    task = ImageClassifier(make_task("image").backbone, 10, scheduler="constant", loss_terms=[NaNAtBatch(position)])
    with pytest.raises(ValueError, match=rf"\(batch {position}\) has a non-finite loss: 1 NaN, although its inputs "
                       r"are finite.*Lower the learning rate.*nonfinite='skip'"):  # fmt: skip
        fit(task, batches("image"))


@pytest.mark.fault(area="tasks", outcome="refused")
@pytest.mark.parametrize("kind", ["image", "grokking", "local", "mil"])
def test_a_loss_that_overflows_on_finite_inputs_is_a_named_error(kind: str) -> None:
    train = batches(kind)
    train[LATER] = {**train[LATER], IMAGE: torch.full_like(train[LATER][IMAGE], 3e38)}  # finite, but it overflows
    words = rf"\(batch {LATER}\) has a non-finite loss.*although its inputs are finite.*nonfinite=.skip."
    with pytest.raises(ValueError, match=words):
        fit(make_task(kind), train)


@pytest.mark.fault(area="tasks", outcome="handled")
def test_skip_mode_skips_a_non_finite_loss_and_keeps_the_weights_finite() -> None:
    task = ImageClassifier(make_task("image").backbone, 10, scheduler="constant", nonfinite="skip",
                           loss_terms=[NaNAtBatch(1)])  # fmt: skip
    trainer, messages = fit(task, batches("image"))
    assert float(trainer.callback_metrics["train/skipped_nonfinite"]) == 1.0
    assert any("the loss is 1 NaN" in m for m in messages)
    assert all(torch.isfinite(p).all() for p in task.parameters())


@pytest.mark.fault(area="tasks", outcome="refused")
@pytest.mark.parametrize("kind", TASKS)
def test_an_unknown_nonfinite_option_is_refused(kind: str) -> None:
    with pytest.raises(ValueError, match=r"nonfinite must be 'raise' .* or 'skip'"):
        make_task(kind, nonfinite="ignore")
