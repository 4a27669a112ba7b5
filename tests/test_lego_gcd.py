"""LegoGCD's LER and DKL, SimGCD's losses and the GCD accuracies, against the equations and brute force."""

import itertools
import math

import pytest
import torch

from lightning_regs.functional import (
    LogitPriorEMA,
    dual_view_kl,
    gcd_accuracy,
    gcd_accuracy_balanced,
    gcd_accuracy_v1,
    local_entropy_regularization,
    mean_entropy_maximization,
    self_distillation_loss,
    teacher_temperature,
    unsupervised_contrastive_loss,
)


def _cosine_logits(rows: int, classes: int, seed: int) -> torch.Tensor:
    return torch.rand(rows, classes, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


@pytest.mark.parametrize("seed", range(5))
def test_ler_with_uniform_prior_equals_ler_without(seed):
    logits = _cosine_logits(16, 6, seed)
    logits[:8, 0] = 1.0  # make some rows confident on a known class
    labelled = torch.arange(16) % 3 == 0
    kwargs = {"labelled_mask": labelled, "known": 3, "threshold": 0.7}
    plain = local_entropy_regularization(logits, **kwargs)
    uniform = local_entropy_regularization(logits, prior=torch.full((6,), 1 / 6, dtype=torch.float64), **kwargs)
    assert plain > 0
    assert float(plain) == pytest.approx(float(uniform), abs=1e-15, rel=1e-12)
    skewed_prior = torch.tensor([0.5, 0.1, 0.1, 0.1, 0.1, 0.1], dtype=torch.float64)
    skewed = local_entropy_regularization(logits, prior=skewed_prior, **kwargs)
    assert abs(float(skewed) / float(plain) - 1) > 1e-2  # the prior does matter when it is not uniform


def test_ler_equals_masked_entropy_by_hand():
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.2, 0.1, 0.0]])
    labelled = torch.tensor([False, False, True, False])
    # row 0: selected; row 1: predicted new; row 2: labelled; row 3: not confident at tau 0.1, delta 0.7
    probs = (logits[0] / 0.05).softmax(0)
    expected = float(-(probs * probs.log()).sum()) / 4
    got = local_entropy_regularization(logits, labelled, known=2, threshold=0.7)
    assert float(got) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "labelled, logits",
    [
        (True, [1.0, -1.0, -1.0]),  # confident, predicted known, but labelled
        (False, [-1.0, -1.0, 1.0]),  # unlabelled, confident, but predicted new
        (False, [0.05, 0.0, 0.0]),  # unlabelled, predicted known, but not confident
    ],
)
def test_ler_zero_loss_and_gradient_without_a_selected_row(labelled, logits):
    logits = torch.tensor([logits] * 4, requires_grad=True)
    loss = local_entropy_regularization(logits, torch.full((4,), labelled), known=2, threshold=0.7)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_ler_selects_known_classes_by_id_not_by_position():
    logits = torch.tensor([[-1.0, -1.0, 1.0]] * 2, requires_grad=True)  # predicts class 2
    labelled = torch.tensor([False, False])
    assert local_entropy_regularization(logits, labelled, known=[2], threshold=0.7).item() > 0
    assert local_entropy_regularization(logits, labelled, known=[0, 1], threshold=0.7).item() == 0.0


def test_logit_prior_ema_and_state():
    ema = LogitPriorEMA(4, momentum=0.9)
    assert torch.allclose(ema.prior, torch.full((4,), 0.25))
    ema.update(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert torch.allclose(ema.prior, torch.tensor([0.325, 0.225, 0.225, 0.225]))
    assert "prior" in ema.state_dict()


def test_dkl_by_hand_and_properties():
    p, q = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.9, 0.1]])
    a, b = 0.1 * p.log(), 0.1 * q.log()  # softmax(z / 0.1) recovers p and q
    by_hand = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert float(dual_view_kl(a, b)) == pytest.approx(by_hand, abs=1e-6)
    assert round(by_hand, 4) == 0.5108
    assert float(dual_view_kl(b, a)) != pytest.approx(by_hand, abs=1e-3)
    x = _cosine_logits(8, 5, 0)
    assert float(dual_view_kl(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(dual_view_kl(x, _cosine_logits(8, 5, 1))) > 0


def test_dkl_gradient_reaches_both_views():
    a, b = _cosine_logits(4, 3, 0).requires_grad_(), _cosine_logits(4, 3, 1).requires_grad_()
    dual_view_kl(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_teacher_temperature_schedule():
    temps = [teacher_temperature(e) for e in range(40)]
    assert temps[0] == 0.07 and temps[29] == pytest.approx(0.04) and temps[35] == 0.04
    assert all(x > y for x, y in itertools.pairwise(temps[:30]))
    assert temps[15] == pytest.approx(0.07 - 0.03 * 15 / 29)


def test_self_distillation_by_hand():
    logits = _cosine_logits(6, 4, 3)
    first, second = logits.chunk(2)
    teacher_first, teacher_second = (first / 0.05).softmax(1), (second / 0.05).softmax(1)
    ce_ab = -(teacher_first * (second / 0.1).log_softmax(1)).sum(1).mean()
    ce_ba = -(teacher_second * (first / 0.1).log_softmax(1)).sum(1).mean()
    got = self_distillation_loss(logits, logits, teacher_temp=0.05)
    assert float(got) == pytest.approx(float((ce_ab + ce_ba) / 2), rel=1e-6)


def test_teacher_is_detached():
    student = _cosine_logits(4, 3, 0).requires_grad_()
    teacher = _cosine_logits(4, 3, 1).requires_grad_()
    self_distillation_loss(student, teacher, 0.04).backward()
    assert teacher.grad is None and student.grad is not None


def test_mean_entropy_maximization():
    assert float(mean_entropy_maximization(torch.zeros(4, 5))) == pytest.approx(0.0, abs=1e-6)
    collapsed = torch.tensor([[1.0, -1.0, -1.0]] * 4)
    assert float(mean_entropy_maximization(collapsed)) == pytest.approx(math.log(3), abs=1e-6)


def test_unsupervised_contrastive_positive_is_the_other_view():
    z = torch.eye(4)
    aligned = torch.cat([z, z])
    shuffled = torch.cat([z, z[[1, 0, 3, 2]]])
    assert unsupervised_contrastive_loss(aligned) < unsupervised_contrastive_loss(shuffled)


def _brute_force_v2(preds, targets, known_mask):
    size = int(max(preds.max(), targets.max())) + 1
    best = max(
        float((preds == torch.tensor(perm)[targets]).double().mean()) for perm in itertools.permutations(range(size))
    )
    return best


@pytest.mark.parametrize("seed", range(20))
def test_v2_equals_brute_force_and_v1_is_never_lower(seed):
    generator = torch.Generator().manual_seed(seed)
    n, classes = 12, 5
    targets = torch.randint(0, classes, (n,), generator=generator)
    preds = torch.randint(0, classes, (n,), generator=generator)
    known = [3, 1]  # old classes not first
    known_mask = torch.isin(targets, torch.tensor(known))
    v2 = gcd_accuracy(preds, targets, known)
    assert v2["all"] == pytest.approx(_brute_force_v2(preds, targets, known_mask))
    v1 = gcd_accuracy_v1(preds, targets, known)
    for group in ("old", "new"):
        if not math.isnan(v2[group]):
            assert v1[group] >= v2[group] - 1e-12


def test_old_new_split_by_class_ids_in_any_order():
    # old classes are 2 and 3 (not first); predictions are a relabelling, perfect except two new rows
    targets = torch.tensor([2, 2, 3, 3, 0, 0, 1, 1])
    preds = torch.tensor([0, 0, 1, 1, 2, 3, 3, 3])
    result = gcd_accuracy(preds, targets, known=[2, 3])
    assert result["old"] == 1.0
    assert result["new"] == pytest.approx(0.75)
    assert result["all"] == pytest.approx(7 / 8)


def test_balanced_averages_classes():
    targets = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    preds = torch.tensor([0, 0, 0, 1, 1, 2, 0])
    result = gcd_accuracy_balanced(preds, targets, known=[0])
    assert result["old"] == pytest.approx(0.75)
    assert result["new"] == pytest.approx((1.0 + 0.5) / 2)
    assert result["all"] == pytest.approx((0.75 + 1.0 + 0.5) / 3)


def _released_code_dkl(logits_a: torch.Tensor, logits_b: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """``DistillLoss``'s DKL as the released LegoGCD code computes it, written out row by row in float64."""
    total = 0.0
    for a, b in zip(logits_a.double(), logits_b.double(), strict=True):
        p = torch.exp(a / tau) / torch.exp(a / tau).sum()
        q = torch.exp(b / tau) / torch.exp(b / tau).sum()
        log_softmax_p = p - torch.log(torch.exp(p).sum())  # the log-softmax of the probabilities themselves
        log_softmax_q = q - torch.log(torch.exp(q).sum())
        total = total + (p * (log_softmax_p - log_softmax_q)).sum()
    return total / len(logits_a)


def test_the_official_dkl_form_is_what_the_released_code_computes_and_far_below_the_kl():
    generator = torch.Generator().manual_seed(0)
    a = (torch.rand(16, 20, generator=generator) * 2 - 1).requires_grad_(True)
    b = (torch.rand(16, 20, generator=generator) * 2 - 1).requires_grad_(True)
    official = dual_view_kl(a, b, form="official")
    torch.testing.assert_close(official.double(), _released_code_dkl(a, b), rtol=1e-5, atol=1e-7)
    kl = dual_view_kl(a, b)
    assert 0 < float(official) < 0.2 * float(kl)  # the paper's KL is much larger than the released term
    official.backward()
    assert a.grad is not None and b.grad is not None and float(b.grad.abs().sum()) > 0  # both views get gradients
    with pytest.raises(ValueError, match="form must be 'kl' or 'official'"):
        dual_view_kl(a, b, form="js")  # type: ignore[arg-type]
