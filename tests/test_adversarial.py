"""PGD against the closed form of a linear model's worst case; its side effects."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_regs.functional.adversarial import pgd_attack, predict, random_perturbation, robust_accuracy
from tests.helpers.official_pgd import official_linf_pgd


def linear_two_class(dim: int = 5, seed: int = 0) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Linear(dim, 2)
    inputs = torch.randn(400, dim)
    targets = predict(model, inputs)  # every clean point correct: robustness is the only question
    flip = torch.rand(400) < 0.2
    targets[flip] = 1 - targets[flip]
    return model, inputs, targets


def closed_form_robust(model: nn.Linear, inputs: torch.Tensor, targets: torch.Tensor, epsilon: float, dual: float):
    """Correct under every ‖δ‖ ≤ ε iff the margin minus ε·‖w_y − w_other‖_dual stays positive."""
    with torch.no_grad():
        direction = model.weight[targets] - model.weight[1 - targets]  # (N, D)
        margin = (inputs * direction).sum(1) + model.bias[targets] - model.bias[1 - targets]
        worst = margin - epsilon * direction.norm(p=dual, dim=1)
    return worst > 0, worst


@pytest.mark.parametrize(
    ("norm", "dual", "random_start"), [("linf", 1, True), ("linf", 1, False), ("l2", 2, False), ("l2", 2, True)]
)
def test_robust_accuracy_of_a_linear_model_matches_its_closed_form(norm, dual, random_start):
    model, inputs, targets = linear_two_class()
    epsilon = 0.3
    robust, worst = closed_form_robust(model, inputs, targets, epsilon, dual)
    steps = 40 if random_start and norm == "l2" else 10
    adversarial = pgd_attack(model, inputs, targets, epsilon, epsilon / 4, steps, norm, random_start)
    survived = predict(model, adversarial).eq(targets)
    if norm == "l2" and random_start:
        # the random start's component across the gradient shrinks geometrically, it never vanishes: skip ties
        decided = worst.abs() > 1e-3
        assert bool(decided.float().mean() > 0.98)
        assert torch.equal(survived[decided], robust[decided])
    else:
        assert torch.equal(survived, robust)
    accuracy = robust_accuracy(model, inputs, targets, epsilon, epsilon / 4, steps, norm, random_start)
    assert accuracy == pytest.approx(float(robust.float().mean()), abs=0.005)
    assert 0.2 < accuracy < 0.8  # neither trivial


def test_perturbations_stay_in_the_ball_and_the_input_range():
    model, inputs, targets = linear_two_class(seed=1)
    for norm, measure in (("linf", lambda d: d.abs().amax(1)), ("l2", lambda d: d.norm(dim=1))):
        start = random_perturbation(inputs, 0.5, norm, torch.Generator().manual_seed(0))
        assert bool((measure(start) <= 0.5 + 1e-5).all())
        adversarial = pgd_attack(model, inputs, targets, 0.5, 0.2, 5, norm, input_range=(-1.0, 1.0))
        assert bool((measure(adversarial - inputs.clamp(-1, 1)) <= 1.0 + 1e-5).all())
        assert float(adversarial.min()) >= -1.0 and float(adversarial.max()) <= 1.0


def test_leaves_modes_gradients_and_rng_as_found():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    model(torch.randn(2, 4)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    inputs, targets = torch.randn(16, 4), torch.randint(0, 3, (16,))
    rng = torch.random.get_rng_state()
    first = pgd_attack(model, inputs, targets, 0.2, 0.05, 5, "linf", generator=torch.Generator().manual_seed(7))
    again = pgd_attack(model, inputs, targets, 0.2, 0.05, 5, "linf", generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, again)  # eval mode: dropout off, private generator
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(m.training for m in model.modules())
    for before, p in zip(grads, model.parameters(), strict=True):
        assert torch.equal(before, p.grad)


def test_bad_arguments_are_named():
    model, inputs, targets = linear_two_class()
    with pytest.raises(ValueError, match="norm"):
        pgd_attack(model, inputs, targets, 0.1, 0.1, 1, "l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-negative"):
        pgd_attack(model, inputs, targets, -0.1, 0.1, 1)


def test_the_random_start_is_clamped_to_the_input_range_as_the_official_code_does():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.rand(8, 1, 4, 4)  # many pixels near 0 and 1: an unclamped start leaves the range
    x[:, :, 0] = 0.0
    y = torch.randint(0, 3, (8,))
    start = random_perturbation(x, 0.3, "linf", torch.Generator().manual_seed(1))
    expected = official_linf_pgd(model, x, y, 0.3, 0.1, 3, start, 0.0, 1.0)
    ours = pgd_attack(model, x, y, 0.3, 0.1, 3, "linf", input_range=(0.0, 1.0), start=start)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
