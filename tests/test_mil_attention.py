"""AEM and ABMIL against closed forms: the entropy, its gradient, masking, and a bag alone equal to a bag padded."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_regs.datamodules.bags import collate_bags
from lightning_regs.functional import (
    attention_entropy,
    attention_entropy_loss,
    masked_attention,
    normalized_attention_entropy,
)
from lightning_regs.models import AttentionMIL, MILOutput
from lightning_regs.tasks import AttentionEntropyTerm, MILClassifier


def written_out_aem(scores: torch.Tensor) -> torch.Tensor:
    """AEM's term as the paper writes it, per bag and head: Σ_n p_n log p_n with p = exp(a) / Σ exp(a)."""
    p = scores.exp() / scores.exp().sum(dim=-1, keepdim=True)
    return (p * p.log()).sum(dim=-1).mean()


@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_uniform_attention_has_entropy_log_n_and_one_hot_zero(n: int) -> None:
    uniform = torch.full((3, 2, n), 0.37)
    assert attention_entropy(uniform) == pytest.approx([math.log(n)] * 3, abs=1e-6)
    assert attention_entropy_loss(uniform).item() == pytest.approx(-math.log(n), abs=1e-6)
    assert normalized_attention_entropy(uniform).tolist() == pytest.approx([1.0] * 3)
    one_hot = torch.full((2, n), -1e4)
    one_hot[:, n // 2] = 0.0
    assert attention_entropy(one_hot).abs().max().item() == 0.0
    assert attention_entropy_loss(one_hot).item() == 0.0
    if n > 1:
        assert normalized_attention_entropy(one_hot).tolist() == [0.0, 0.0]


def test_the_loss_and_its_gradient_equal_the_written_out_expression_in_float64() -> None:
    torch.manual_seed(0)
    scores = torch.randn(4, 3, 9, dtype=torch.float64, requires_grad=True)
    reference = scores.detach().clone().requires_grad_(True)
    ours = attention_entropy_loss(scores)
    theirs = written_out_aem(reference)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-12)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(scores.grad, reference.grad, rtol=0, atol=1e-14)
    # and the closed form: d/da_j Σ p log p = p_j (log p_j - Σ_k p_k log p_k), over the 12 (bag, head) rows
    p = scores.detach().softmax(dim=-1)
    plogp = (p * p.log()).sum(dim=-1, keepdim=True)
    torch.testing.assert_close(scores.grad, p * (p.log() - plogp) / 12, rtol=0, atol=1e-14)


def test_descending_the_term_drives_the_scores_to_a_constant() -> None:
    scores = torch.tensor([[3.0, -1.0, 0.5, 2.0, -2.0]], requires_grad=True)
    optimizer = torch.optim.SGD([scores], lr=5.0)
    for _ in range(300):
        optimizer.zero_grad()
        attention_entropy_loss(scores).backward()
        optimizer.step()
    assert scores.detach().std().item() < 1e-3
    assert attention_entropy(scores.detach()).item() == pytest.approx(math.log(5), abs=1e-6)


def test_padded_instances_get_no_attention_and_change_nothing() -> None:
    torch.manual_seed(1)
    scores = torch.randn(2, 3, 6)
    mask = torch.tensor([[True] * 6, [True] * 2 + [False] * 4])
    loud = scores.clone()
    loud[1, :, 2:] = 1e6  # whatever the padding scores are
    weights = masked_attention(loud, mask)
    assert weights[1, :, 2:].abs().max().item() == 0.0
    torch.testing.assert_close(weights[1, :, :2], scores[1, :, :2].softmax(dim=-1))
    per_bag = attention_entropy(loud, mask)
    assert per_bag[1].item() == pytest.approx(attention_entropy(scores[1:, :, :2]).item(), abs=1e-6)
    assert per_bag[0].item() == pytest.approx(attention_entropy(scores[:1]).item(), abs=1e-6)


def test_the_gradient_through_a_padded_batch_is_finite_and_each_bags_own() -> None:
    torch.manual_seed(4)
    scores = torch.randn(2, 2, 6, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    attention_entropy_loss(scores, mask).backward()
    assert torch.isfinite(scores.grad).all() and scores.grad[1, :, 3:].abs().max().item() == 0.0
    alone = scores.detach()[1:, :, :3].clone().requires_grad_(True)
    attention_entropy_loss(alone).backward()
    torch.testing.assert_close(scores.grad[1, :, :3], alone.grad[0] / 2, rtol=0, atol=1e-14)  # mean over 2 bags


@pytest.mark.parametrize("shape", [(5,), (2, 5), (2, 3, 5)])
def test_every_documented_score_shape_is_read(shape) -> None:
    assert attention_entropy(torch.zeros(shape)).tolist() == pytest.approx(
        [math.log(5)] * (shape[0] if len(shape) > 1 else 1)
    )


def test_bad_scores_and_masks_are_named_errors() -> None:
    with pytest.raises(ValueError, match=r"\(B, heads, N\) pre-softmax"):
        attention_entropy(torch.zeros(1, 1, 1, 4))
    with pytest.raises(ValueError, match=r"must be \(B, N\)"):
        attention_entropy(torch.zeros(2, 4), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="no real instance"):
        attention_entropy(torch.zeros(2, 4), torch.tensor([[True] * 4, [False] * 4]))


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("heads", [1, 3])
def test_a_bag_alone_and_padded_in_a_batch_gives_the_same_output(gated: bool, heads: int) -> None:
    torch.manual_seed(2)
    model = AttentionMIL(in_features=8, num_classes=3, embed_dim=16, attention_dim=8, heads=heads, gated=gated)
    bags = [{"image": torch.randn(n, 8), "target": torch.tensor(n % 3), "index": torch.tensor(i)} for i, n in
            enumerate([5, 2, 9, 1])]  # fmt: skip
    batch = collate_bags(bags)
    together = model(batch["image"], batch["instance_mask"])
    for row, bag in enumerate(bags):
        alone = model(bag["image"])
        n = bag["image"].shape[0]
        torch.testing.assert_close(together.logits[row], alone.logits[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(together.attention[row, :, :n], alone.attention[0], rtol=0, atol=1e-6)
    term = AttentionEntropyTerm(weight=0.1)
    padded = term({"attention": together.attention}, batch)
    singles = torch.stack([term({"attention": model(b["image"]).attention}, {}) for b in bags]).mean()
    assert padded.item() == pytest.approx(singles.item(), abs=1e-6)


def test_gated_attention_is_ilse_et_al_written_out() -> None:
    torch.manual_seed(3)
    model = AttentionMIL(in_features=4, num_classes=2, embed_dim=6, attention_dim=5, gated=True)
    bag = torch.randn(7, 4)
    h = torch.relu(bag @ model.embed[0].weight.T + model.embed[0].bias)
    v = torch.tanh(h @ model.attention_v[0].weight.T + model.attention_v[0].bias)
    u = torch.sigmoid(h @ model.attention_u[0].weight.T + model.attention_u[0].bias)
    a = (v * u) @ model.attention_w.weight.T  # (7, 1); no bias: the softmax ignores it
    z = (a.softmax(dim=0) * h).sum(dim=0)
    out = model(bag)
    torch.testing.assert_close(out.attention[0, 0], a[:, 0])
    torch.testing.assert_close(out.logits[0], z @ model.classifier.weight.T + model.classifier.bias)


def test_an_encoder_reads_image_instances() -> None:
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 12))
    model = AttentionMIL(in_features=12, encoder=encoder)
    assert model(torch.randn(2, 5, 1, 8, 8), torch.ones(2, 5, dtype=torch.bool)).logits.shape == (2, 2)
    assert model(torch.randn(5, 1, 8, 8)).logits.shape == (1, 2)
    with pytest.raises(ValueError, match="in_features=12"):
        AttentionMIL(in_features=12)(torch.randn(2, 5, 64))


def test_the_term_names_what_it_needs() -> None:
    term = AttentionEntropyTerm()
    with pytest.raises(KeyError, match=r"output 'attention', but the model's outputs hold logits only \(a model"):
        term({"logits": torch.zeros(1, 2)}, {})
    with pytest.raises(KeyError, match=r"outputs hold \['features', 'logits'\]"):
        term({"logits": torch.zeros(1, 2), "features": torch.zeros(1, 3)}, {})
    with pytest.raises(ValueError, match="maximizes it with a weight"):
        AttentionEntropyTerm(weight=-0.1)
    assert AttentionEntropyTerm(weight=0.0)({"logits": torch.zeros(1, 2), "attention": torch.zeros(1, 3)}, {}) < 0


class MeanPoolNoMask(nn.Module):
    """A user's MIL model without an instance_mask argument: mean pooling, attention returned as a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Linear(8, 1)
        self.classify = nn.Linear(8, 2)

    def forward(self, bags: torch.Tensor) -> dict[str, torch.Tensor]:
        scores = self.score(bags).squeeze(-1)
        return {"logits": self.classify((scores.softmax(-1)[..., None] * bags).sum(1)), "attention": scores}


def test_a_model_without_a_mask_argument_trains_on_unpadded_bags_and_is_told_about_padding() -> None:
    task = MILClassifier(MeanPoolNoMask(), loss_terms=[AttentionEntropyTerm(weight=0.1)])
    even = {"image": torch.randn(2, 4, 8), "target": torch.tensor([0, 1]), "instance_mask": torch.ones(2, 4).bool()}
    assert task.training_step(even, 0)["logits"].shape == (2, 2)
    padded = {**even, "instance_mask": torch.tensor([[True] * 4, [True, True, False, False]])}
    with pytest.raises(TypeError, match="takes no instance_mask argument"):
        task.training_step(padded, 0)


def test_the_task_returns_the_model_output_fields_and_reserves_its_metric_names() -> None:
    task = MILClassifier(AttentionMIL(in_features=8))
    out = task(torch.randn(2, 3, 8))
    assert isinstance(out, MILOutput)
    with pytest.raises(ValueError, match="attention_entropy"):
        task.add_loss_term(AttentionEntropyTerm(name="attention_entropy"))


class TupleMIL(MeanPoolNoMask):
    """What many MIL code bases return: (logits, attention)."""

    def forward(self, bags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = super().forward(bags)
        return out["logits"], out["attention"]


def test_a_tuple_output_is_told_how_to_return_the_attention() -> None:
    task = MILClassifier(TupleMIL())
    batch = {"image": torch.randn(1, 4, 8), "target": torch.tensor([1])}
    with pytest.raises(TypeError, match=r"For MILClassifier return \{'logits': logits, 'attention': scores\}"):
        task.training_step(batch, 0)


def test_predict_returns_probabilities_and_each_bags_attention_over_its_real_instances() -> None:
    torch.manual_seed(5)
    task = MILClassifier(AttentionMIL(in_features=8, heads=2)).eval()
    bags = [{"image": torch.randn(n, 8), "target": torch.tensor(0), "index": torch.tensor(10 + i)} for i, n in
            enumerate([4, 2])]  # fmt: skip
    batch = collate_bags(bags)
    out = task.predict_step(batch, 0)
    assert sorted(out) == ["attention", "index", "instance_mask", "probabilities"]
    assert out["index"].tolist() == [10, 11] and out["probabilities"].sum(-1).tolist() == pytest.approx([1.0, 1.0])
    alone = task.backbone(bags[1]["image"])
    torch.testing.assert_close(out["attention"][1, :, :2], alone.attention[0].softmax(-1))
    assert out["attention"][1, :, 2:].abs().max().item() == 0.0


def test_the_gradient_of_a_bag_alone_equals_its_gradient_padded_in_a_batch() -> None:
    torch.manual_seed(6)
    model = AttentionMIL(in_features=5, num_classes=2, embed_dim=6, attention_dim=4, heads=2).double()
    bags = [{"image": torch.randn(n, 5, dtype=torch.float64), "target": torch.tensor(n % 2)} for n in (6, 2, 4)]
    batch = collate_bags(bags)
    term = AttentionEntropyTerm(weight=0.1)

    def objective(out, targets, mask_batch):
        return torch.nn.functional.cross_entropy(out.logits, targets) + 0.1 * term(
            {"attention": out.attention}, mask_batch
        )

    model.zero_grad()
    objective(model(batch["image"], batch["instance_mask"]), batch["target"], batch).backward()
    padded = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for bag in bags:  # the mean over bags, one at a time
        (objective(model(bag["image"]), bag["target"][None], {}) / len(bags)).backward()
    for together, alone in zip(padded, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(together, alone, rtol=0, atol=1e-12)


def test_an_encoder_sees_only_the_real_instances() -> None:
    seen: list[int] = []

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 3)

        def forward(self, x):
            seen.append(x.shape[0])
            return self.linear(x)

    model = AttentionMIL(in_features=3, encoder=Counting())
    batch = collate_bags([{"image": torch.randn(n, 4), "target": torch.tensor(0)} for n in (5, 1, 3)])
    padded = model(batch["image"], batch["instance_mask"])
    assert seen == [9]  # 5 + 1 + 3 real instances, not 3 × 5
    torch.testing.assert_close(padded.logits[1], model(batch["image"][1:2, :1]).logits[0])


def test_collate_names_the_bag_whose_instance_labels_do_not_match() -> None:
    bag = {"image": torch.ones(4, 2), "target": torch.tensor(1), "index": torch.tensor(7),
           "instance_target": torch.zeros(3)}  # fmt: skip
    with pytest.raises(ValueError, match=r"Bag 7 has 4 instances but instance_target of shape \(3,\)"):
        collate_bags([bag])
