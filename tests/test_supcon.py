"""Supervised contrastive loss against a loop over Khosla et al.'s Eq. 2 and closed forms."""

import math

import pytest
import torch

from lightning_regs.functional.supcon import supervised_contrastive_loss


def reference(features: torch.Tensor, labels: list[int], temperature: float, base: float) -> float:
    """Eq. 2 (L^sup_out) with plain Python loops, in float64; anchors without positives are skipped."""
    z = [f / f.norm() for f in features.double()]
    terms = []
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(float(z[i] @ z[a]) / temperature) for a in range(len(z)) if a != i)
        total = sum(math.log(math.exp(float(z[i] @ z[p]) / temperature) / denominator) for p in positives)
        terms.append(-(temperature / base) * total / len(positives))
    return sum(terms) / len(terms)


@pytest.mark.parametrize(("temperature", "base"), [(0.07, 0.07), (0.5, 0.07), (1.0, 1.0)])
def test_matches_the_equation_computed_by_loops(temperature, base):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(12, 5, generator=generator)
    labels = [0, 1, 2, 0, 1, 2, 0, 3, 1, 1, 4, 0]  # classes 3 and 4 have a single sample: no term
    loss = supervised_contrastive_loss(features, torch.tensor(labels), temperature, base)
    assert loss.item() == pytest.approx(reference(features, labels, temperature, base), rel=1e-5)


def test_closed_forms_and_scale_invariance():
    pair = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    assert supervised_contrastive_loss(pair, torch.tensor([0, 0])).item() == pytest.approx(0.0, abs=1e-6)
    # Two classes on orthogonal axes, tau = 1: each anchor has one positive (cos 1) and one negative (cos 0)
    # among the others... and a second negative: -log(e / (e + 2)).
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    expected = -math.log(math.e / (math.e + 2.0))
    assert supervised_contrastive_loss(z, torch.tensor([0, 0, 1, 1]), 1.0, 1.0).item() == pytest.approx(expected)
    assert supervised_contrastive_loss(5 * z, torch.tensor([0, 0, 1, 1]), 1.0, 1.0).item() == pytest.approx(expected)


def test_no_positive_pair_gives_zero_with_a_graph_and_bad_shapes_are_named():
    features = torch.randn(3, 4, requires_grad=True)
    loss = supervised_contrastive_loss(features, torch.tensor([0, 1, 2]))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(features.grad, torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"features \(B, D\) and labels \(B,\)"):
        supervised_contrastive_loss(torch.randn(3, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="positive"):
        supervised_contrastive_loss(torch.randn(3, 4), torch.tensor([0, 1, 1]), temperature=0.0)


def test_gradient_matches_finite_differences():
    features = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda f: supervised_contrastive_loss(f, labels, 0.5, 0.5).double(), (features,))
