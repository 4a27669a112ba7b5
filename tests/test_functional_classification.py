import math

import pytest
import torch

from lightning_regs.functional import classification_loss, hard_labels, is_soft_target


def reference_cross_entropy(logits: torch.Tensor, probabilities: torch.Tensor) -> float:
    """-mean_b sum_c q_bc log softmax(z)_bc, written out element by element."""
    total = 0.0
    for row, q in zip(logits.tolist(), probabilities.tolist(), strict=True):
        log_norm = math.log(sum(math.exp(z) for z in row))
        total -= sum(qc * (zc - log_norm) for zc, qc in zip(row, q, strict=True))
    return total / len(logits)


def test_hard_targets_match_the_formula():
    logits = torch.randn(6, 4)
    target = torch.tensor([0, 3, 1, 2, 2, 0])
    one_hot = torch.nn.functional.one_hot(target, 4).float()
    assert classification_loss(logits, target).item() == pytest.approx(reference_cross_entropy(logits, one_hot))


def test_soft_targets_match_the_formula():
    logits = torch.randn(5, 3)
    target = torch.rand(5, 3).softmax(dim=-1)
    assert classification_loss(logits, target).item() == pytest.approx(reference_cross_entropy(logits, target))


def test_half_precision_soft_targets_are_accepted():
    logits = torch.randn(5, 3)
    target = torch.rand(5, 3).softmax(dim=-1)
    loss = classification_loss(logits, target.half())
    assert loss.item() == pytest.approx(reference_cross_entropy(logits, target.half().float()), rel=1e-6)


def test_soft_one_hot_equals_hard():
    logits = torch.randn(8, 5)
    target = torch.randint(0, 5, (8,))
    soft = torch.nn.functional.one_hot(target, 5).float()
    torch.testing.assert_close(classification_loss(logits, target), classification_loss(logits, soft))


@pytest.mark.parametrize(
    "target",
    [torch.rand(4, 2), torch.zeros(4, 3, dtype=torch.long), torch.zeros(3, dtype=torch.long), torch.rand(4)],
    ids=["soft-wrong-classes", "2d-int", "wrong-batch", "1d-float"],
)
def test_malformed_targets_are_rejected(target):
    with pytest.raises(ValueError, match="shape"):
        classification_loss(torch.randn(4, 3), target)


def test_hard_labels_and_soft_detection():
    assert is_soft_target(torch.rand(2, 3)) and not is_soft_target(torch.tensor([1, 2]))
    assert hard_labels(torch.tensor([2, 0])).tolist() == [2, 0]
