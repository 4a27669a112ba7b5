"""Learning from aggregate responses: the losses against their equations and closed forms, the whole-bag sampler,
the toys, the task (fit, resume mid-epoch, DDP) and the card's example (the example config runs in
tests/test_example_configs.py)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch import Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_regs.datamodules import samplers as samplers_module
from lightning_regs.datamodules.aggregate_toys import (
    AggregateDataset,
    AggregateRegressionDataModule,
    LabelProportionsDataModule,
)
from lightning_regs.datamodules.bag_sampler import BagBatchSampler, bag_dataloader
from lightning_regs.functional.aggregate import (
    aggregate_response_loss,
    aggregate_response_terms,
    bag_dispersion,
    bag_level_loss,
    bag_mean,
    instance_level_loss,
)
from lightning_regs.models import MLP
from lightning_regs.tasks.aggregate_response import AggregateResponseTask
from tests.harness.compare import assert_same_state
from tests.harness.registry import aggregate_regression, aggregate_response_task
from tests.harness.runs import SaveFinalState
from tests.helpers.ddp import DDP_SPAWN_CPU
from tests.helpers.doc_blocks import block, run_python
from tests.helpers.trainers import QUIET


def unequal_bags(rows: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 predictions, bag ids with sizes 1..7 in shuffled rows (ids not 0-based), and per-row bag means."""
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 8, (rows,), generator=generator)
    ids = torch.repeat_interleave(torch.arange(rows) * 3 + 5, sizes)[:rows]
    ids = ids[torch.randperm(rows, generator=generator)]
    preds = torch.randn(rows, dtype=torch.float64, generator=generator)
    responses = torch.randn(int(ids.max()) + 1, dtype=torch.float64, generator=generator)
    return preds, ids, responses[ids]


# --- the functional core ------------------------------------------------------------------------------------------


def test_instance_loss_is_size_weighted_bag_loss_plus_within_bag_spread_for_unequal_bags():
    preds, ids, targets = unequal_bags()
    assert len(torch.unique(torch.bincount(ids)[torch.bincount(ids) > 0])) > 3  # bags of several sizes
    l_ins = instance_level_loss(preds, ids, targets)
    l_size = bag_level_loss(preds, ids, targets, bag_weights="size")
    r = bag_dispersion(preds, ids)
    assert abs(float(l_ins - (l_size + r))) < 1e-12
    # the paper's L_bag (1/m over bags) is not the size-weighted one when the sizes differ
    assert abs(float(bag_level_loss(preds, ids, targets) - l_size)) > 1e-3
    for rho in (0.0, 0.3, 1.0):
        size = aggregate_response_loss(preds, ids, targets, rho, bag_weights="size")
        assert abs(float(size - ((1 - rho) * l_size + rho * l_ins))) < 1e-12  # exactly the interpolation
        uniform = aggregate_response_loss(preds, ids, targets, rho)
        assert abs(float(uniform - (bag_level_loss(preds, ids, targets) + rho * r))) < 1e-12  # what "uniform" is
    assert abs(float(aggregate_response_loss(preds, ids, targets, 1.0) - l_ins)) > 1e-3  # so ρ = 1 is not L_ins


def test_with_equal_bag_sizes_both_weightings_agree_and_the_interpolation_is_exact():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randperm(60, generator=generator) % 12  # 12 bags of 5, rows interleaved
    preds = torch.randn(60, dtype=torch.float64, generator=generator)
    targets = torch.randn(12, dtype=torch.float64, generator=generator)[ids]
    l_bag, l_ins = bag_level_loss(preds, ids, targets), instance_level_loss(preds, ids, targets)
    assert abs(float(l_bag - bag_level_loss(preds, ids, targets, bag_weights="size"))) < 1e-12
    assert abs(float(l_ins - (l_bag + bag_dispersion(preds, ids)))) < 1e-12
    for rho in (0.0, 0.25, 0.5, 0.75, 1.0):
        loss = aggregate_response_loss(preds, ids, targets, rho)
        assert abs(float(loss - ((1 - rho) * l_bag + rho * l_ins))) < 1e-12


def test_the_squared_loss_equals_a_written_out_loop_over_bags():
    preds, ids, targets = unequal_bags(seed=3)
    bags = torch.unique(ids).tolist()
    per_bag = [(targets[ids == a][0] - preds[ids == a].mean()) ** 2 for a in bags]
    spread = sum(((preds[ids == a] - preds[ids == a].mean()) ** 2).sum() for a in bags) / len(preds)
    expected = sum(per_bag) / len(bags) + 0.4 * spread
    terms = aggregate_response_terms(preds, ids, targets, 0.4)
    assert abs(float(terms.loss - expected)) < 1e-12
    assert abs(float(terms.instance - ((targets - preds) ** 2).mean())) < 1e-12


def ce_loop(logits, ids, proportions, rho, size_weighted=False):
    """(1 − ρ)·L_bag + ρ·L_ins for label proportions, bag by bag."""
    bag_terms, weights, instance = [], [], []
    for a in torch.unique(ids).tolist():
        rows = ids == a
        q = proportions[rows][0]
        probs = logits[rows].softmax(dim=1)
        bag_terms.append(-(q * probs.mean(dim=0).log()).sum())
        weights.append(float(rows.sum()) / len(ids))
        instance += [-(q * p.log()).sum() for p in probs]
    bag = (
        sum(w * t for w, t in zip(weights, bag_terms, strict=True))
        if size_weighted
        else sum(bag_terms) / len(bag_terms)
    )
    return (1 - rho) * bag + rho * sum(instance) / len(instance), bag, sum(instance) / len(instance)


@pytest.mark.parametrize("size_weighted", [False, True])
@pytest.mark.parametrize("rho", [0.0, 0.35, 1.0])
def test_label_proportions_loss_equals_a_written_out_loop_over_bags(rho, size_weighted):
    generator = torch.Generator().manual_seed(2)
    _, ids, _ = unequal_bags(30, seed=2)
    logits = (3 * torch.randn(30, 4, dtype=torch.float64, generator=generator)).requires_grad_()
    proportions = torch.rand(int(ids.max()) + 1, 4, dtype=torch.float64, generator=generator)
    proportions[::3, 1] = 0.0  # classes absent from some bags
    proportions = (proportions / proportions.sum(1, keepdim=True))[ids]
    weights = "size" if size_weighted else "uniform"
    terms = aggregate_response_terms(logits, ids, proportions, rho, loss="ce", bag_weights=weights)
    expected, bag, instance = ce_loop(logits, ids, proportions, rho, size_weighted)
    torch.testing.assert_close(terms.loss, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(terms.bag, bag, rtol=0, atol=1e-12)
    torch.testing.assert_close(terms.instance, instance, rtol=0, atol=1e-12)
    (ours,) = torch.autograd.grad(terms.loss, logits)
    (theirs,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    # Jensen: −log of a bag's mean probability is at most the mean −log, so L_ins ≥ the size-weighted L_bag
    size_bag = bag_level_loss(logits, ids, proportions, loss="ce", bag_weights="size")
    gap = (terms.instance - size_bag - terms.regularizer).detach()
    assert float(terms.regularizer.detach()) > 0 and abs(float(gap)) < 1e-12


def test_label_proportions_loss_is_finite_for_extreme_logits():
    logits = torch.tensor([[1000.0, -1000.0], [-1000.0, 1000.0], [500.0, 0.0]], requires_grad=True)
    proportions = torch.tensor([[0.5, 0.5], [0.5, 0.5], [1.0, 0.0]])
    loss = aggregate_response_loss(logits, torch.tensor([0, 0, 1]), proportions, rho=0.0, loss="ce")
    loss.backward()
    assert abs(float(loss.detach()) - 0.5 * float(torch.log(torch.tensor(2.0)))) < 1e-5  # bag 0: mean probs (0.5, 0.5)
    assert torch.isfinite(logits.grad).all()


def _fit_linear_exactly(x, ids, targets, rho, bag_weights="uniform"):
    """Minimise the (quadratic) loss of a linear model with bias: one Newton step from 0 with autograd's Hessian."""
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)

    def loss(w):
        return aggregate_response_loss(design @ w, ids, targets, rho, bag_weights=bag_weights)

    w0 = torch.zeros(design.shape[1], dtype=x.dtype)
    gradient = torch.autograd.functional.jacobian(loss, w0)
    hessian = torch.autograd.functional.hessian(loss, w0)
    return torch.linalg.solve(hessian, -gradient)


def _regression_bags(n=300, d=6, k=5, seed=0, equal=True):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, dtype=torch.float64, generator=generator)
    y = x @ torch.randn(d, dtype=torch.float64, generator=generator) + 0.5 * torch.randn(
        n, dtype=torch.float64, generator=generator
    )
    ids = torch.randperm(n, generator=generator) // k if equal else torch.randint(0, n // k, (n,), generator=generator)
    _, means = bag_mean(y, ids)
    return x, ids, means[torch.unique(ids, return_inverse=True)[1]]


def test_rho_one_fits_instance_level_least_squares():
    x, ids, targets = _regression_bags()
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    expected = torch.linalg.lstsq(design, targets[:, None]).solution.flatten()  # regress ȳ_{a(i)} on x_i
    torch.testing.assert_close(_fit_linear_exactly(x, ids, targets, 1.0), expected, rtol=0, atol=1e-10)


def test_rho_one_with_size_weights_fits_instance_level_least_squares_for_unequal_bags():
    x, ids, targets = _regression_bags(equal=False)
    assert len(torch.unique(torch.bincount(ids))) > 2
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    expected = torch.linalg.lstsq(design, targets[:, None]).solution.flatten()
    torch.testing.assert_close(_fit_linear_exactly(x, ids, targets, 1.0, "size"), expected, rtol=0, atol=1e-10)
    assert (_fit_linear_exactly(x, ids, targets, 1.0) - expected).abs().max() > 1e-3  # "uniform" is another fit


def test_rho_zero_fits_bag_level_least_squares():
    x, ids, targets = _regression_bags()
    _, x_bar = bag_mean(x, ids)
    _, y_bar = bag_mean(targets, ids)
    bag_design = torch.cat([x_bar, torch.ones(len(x_bar), 1, dtype=x.dtype)], 1)
    expected = torch.linalg.lstsq(bag_design, y_bar[:, None]).solution.flatten()  # regress ȳ_a on x̄_a
    torch.testing.assert_close(_fit_linear_exactly(x, ids, targets, 0.0), expected, rtol=0, atol=1e-10)


def test_on_random_bags_instance_level_least_squares_estimates_theta_over_k():
    data = AggregateRegressionDataModule(num_samples=20000, num_features=4, bag_size=10, noise=0.5, seed=3)
    data.setup()
    train = data.datasets["train"]
    slope = _fit_linear_exactly(train.features.double(), train.bag_ids, train.responses.double(), 1.0)[:-1]
    torch.testing.assert_close(slope, data.theta.double() / 10, rtol=0, atol=0.03)
    unbiased = _fit_linear_exactly(train.features.double(), train.bag_ids, train.responses.double(), 0.0)[:-1]
    torch.testing.assert_close(unbiased, data.theta.double(), rtol=0, atol=0.1)


def test_rows_of_a_bag_need_not_be_adjacent_and_lower_precision_is_computed_in_float32():
    preds, ids, targets = unequal_bags(seed=4)
    order = torch.randperm(len(ids))
    first = aggregate_response_loss(preds, ids, targets, 0.5)
    torch.testing.assert_close(aggregate_response_loss(preds[order], ids[order], targets[order], 0.5), first)
    low = aggregate_response_loss(preds.bfloat16(), ids, targets.float(), 0.5)
    assert low.dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rho": -0.1}, "rho must be a number in \\[0, 1\\]"),
        ({"rho": 1.5}, "rho must be a number in \\[0, 1\\]"),
        ({"rho": float("nan")}, "rho must be a number"),
        ({"rho": True}, "rho must be a number"),
        ({"loss": "mae"}, "Unknown loss 'mae'"),
        ({"bag_weights": "count"}, "Unknown bag_weights 'count'"),
        ({"preds": torch.zeros(4, 1)}, "squeeze a \\(B, 1\\) output"),
        ({"bag_ids": torch.tensor([0.0, 0.0, 1.0, 1.0])}, "bag_ids must be a \\(B,\\) integer tensor"),
        ({"bag_ids": torch.tensor([0, 0, 1])}, "bag_ids has 3 rows but the predictions have 4"),
        ({"bag_targets": torch.zeros(3)}, "bag_targets must have the predictions' shape"),
        ({"bag_targets": torch.tensor([1, 1, 2, 2])}, "bag_targets must be floating point"),
        ({"bag_targets": torch.tensor([1.0, 1.5, 2.0, 2.0])}, "The rows of bag 0 carry different targets"),
        ({"preds": torch.zeros(0), "bag_ids": torch.zeros(0, dtype=torch.long)}, "empty batch"),
    ],
)
def test_bad_arguments_get_named_errors(kwargs, message):
    arguments = {
        "preds": torch.zeros(4),
        "bag_ids": torch.tensor([0, 0, 1, 1]),
        "bag_targets": torch.tensor([1.0, 1.0, 2.0, 2.0]),
        "rho": 0.5,
    }
    arguments.update(kwargs)
    if "preds" in kwargs and kwargs["preds"].numel() == 0:
        arguments["bag_targets"] = torch.zeros(0)
    with pytest.raises(ValueError, match=message):
        aggregate_response_loss(**arguments)


def test_label_proportion_targets_are_checked():
    logits, ids = torch.zeros(2, 3), torch.tensor([0, 0])
    with pytest.raises(ValueError, match="class proportions as bag_targets"):
        aggregate_response_loss(logits, ids, torch.tensor([[0.5, 0.5, 0.5]] * 2), 0.5, loss="ce")
    with pytest.raises(ValueError, match="loss='ce' takes \\(B, C\\) logits"):
        aggregate_response_loss(torch.zeros(2), ids, torch.zeros(2), 0.5, loss="ce")
    with pytest.raises(ValueError, match="The rows of bag 0 carry different targets"):
        aggregate_response_loss(logits, ids, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), 0.5, loss="ce")


# --- the sampler ---------------------------------------------------------------------------------------------------


def _bag_sets(sampler: BagBatchSampler, bag_ids: list[int]) -> list[list[int]]:
    return [sorted({bag_ids[i] for i in batch}) for batch in sampler]


def _fake_dist(monkeypatch, rank: int, world_size: int) -> None:
    fake = SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: True,
        get_world_size=lambda: world_size,
        get_rank=lambda: rank,
    )
    monkeypatch.setattr(samplers_module, "dist", fake)  # where the samplers read their rank


SIZES = [3, 1, 4, 1, 5, 2, 6, 5, 3, 5, 2, 4]  # 12 bags of unequal sizes
BAG_IDS = [bag for bag, size in enumerate(SIZES) for _ in range(size)]
SHUFFLED_ROWS = torch.randperm(len(BAG_IDS), generator=torch.Generator().manual_seed(0)).tolist()
ROW_BAGS = [BAG_IDS[i] for i in SHUFFLED_ROWS]  # rows of a bag scattered over the data set


def test_the_sampler_keeps_bags_whole_and_covers_every_bag_once_per_epoch():
    sampler = BagBatchSampler(ROW_BAGS, bags_per_batch=5, seed=0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 3  # 5 + 5 + 2 bags
        rows = [row for batch in batches for row in batch]
        assert sorted(rows) == list(range(len(ROW_BAGS)))  # every row once, so every bag once
        for batch in batches:  # every bag in the batch with all its rows
            for bag in {ROW_BAGS[i] for i in batch}:
                assert sum(ROW_BAGS[i] == bag for i in batch) == SIZES[bag]
        assert [len({ROW_BAGS[i] for i in b}) for b in batches] == [5, 5, 2]


def test_the_order_is_a_function_of_seed_and_epoch():
    def order(seed: int, epoch: int) -> list[list[int]]:
        sampler = BagBatchSampler(ROW_BAGS, bags_per_batch=3, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2) and order(0, 1) != order(1, 1)
    unshuffled = BagBatchSampler(ROW_BAGS, bags_per_batch=3, shuffle=False)
    assert _bag_sets(unshuffled, ROW_BAGS)[0] == [0, 1, 2]


def test_two_ranks_take_disjoint_whole_bags_whose_union_is_the_single_process_batch(monkeypatch):
    single = BagBatchSampler(ROW_BAGS, bags_per_batch=4, seed=0)
    single.set_epoch(2)
    single_batches = [sorted(b) for b in single]
    per_rank = []
    for rank in (0, 1):
        _fake_dist(monkeypatch, rank, 2)
        sampler = BagBatchSampler(ROW_BAGS, bags_per_batch=2, seed=0)
        sampler.set_epoch(2)
        per_rank.append(list(sampler))
        assert len(sampler) == len(per_rank[-1]) == 3
    bags = [{ROW_BAGS[i] for batch in batches for i in batch} for batches in per_rank]
    assert not bags[0] & bags[1] and bags[0] | bags[1] == set(range(12))
    for step in range(3):  # step j of the two ranks together is the one-process batch j of twice the bags
        assert sorted(per_rank[0][step] + per_rank[1][step]) == single_batches[step]


@pytest.mark.parametrize("drop_last", [False, True])
def test_a_remainder_of_bags_is_padded_or_dropped_to_the_same_count_on_every_rank(monkeypatch, drop_last):
    seven = [bag for bag in range(7) for _ in range(2)]
    bags = []
    for rank in (0, 1):
        _fake_dist(monkeypatch, rank, 2)
        sampler = BagBatchSampler(seven, bags_per_batch=2, seed=0, drop_last=drop_last)
        bags.append(
            [seven[batch[0]] for batch in sampler for batch in [batch[i : i + 2] for i in range(0, len(batch), 2)]]
        )
        assert sampler.bags_per_rank == (3 if drop_last else 4)
    assert len(bags[0]) == len(bags[1]) == (3 if drop_last else 4)
    seen = bags[0] + bags[1]
    if drop_last:  # one bag left out this epoch, none twice
        assert len(set(seen)) == 6 == len(seen)
    else:  # every bag, and the first bag of the order twice
        assert set(seen) == set(range(7)) and len(seen) == 8
    _fake_dist(monkeypatch, 0, 8)
    with pytest.raises(ValueError, match="cannot be shared by 8 ranks"):
        list(BagBatchSampler(seven, bags_per_batch=2, drop_last=True))


def test_resume_at_skips_the_batches_this_rank_trained_on_in_that_epoch_only():
    sampler = BagBatchSampler(ROW_BAGS, bags_per_batch=2, seed=0)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.resume_at(epoch=1, skip=4)
    assert list(sampler) == full[4:] and len(sampler) == len(full) == 6  # len: the epoch's, as Lightning counts
    sampler.set_epoch(2)
    assert len(list(sampler)) == 6  # the next epoch starts from its top
    with pytest.raises(ValueError, match="skip must be 0 or more"):
        sampler.resume_at(1, -1)


def test_an_iterator_made_before_set_epoch_serves_the_epoch_set_before_its_first_batch():
    # Lightning makes the loader's iterator (setup_data) before it calls set_epoch (on_advance_start)
    sampler = BagBatchSampler(ROW_BAGS, bags_per_batch=2, seed=0)
    iterator = iter(sampler)
    sampler.set_epoch(1)
    sampler.resume_at(epoch=1, skip=2)
    assert list(iterator) == sampler.epoch_batches()[2:]


def test_bad_sampler_arguments_get_named_errors():
    with pytest.raises(ValueError, match="integer bag ids"):
        BagBatchSampler([0.0, 1.0], bags_per_batch=1)
    with pytest.raises(ValueError, match="bags_per_batch must be a positive integer"):
        BagBatchSampler([0, 1], bags_per_batch=0)
    with pytest.raises(ValueError, match="empty"):
        BagBatchSampler([], bags_per_batch=1)


@pytest.mark.parametrize("mode", ["sampler", "batch_sampler"])
def test_lightning_reaches_set_epoch_in_both_loader_forms(mode):
    ids = torch.tensor(ROW_BAGS)
    sampler = BagBatchSampler(ids, bags_per_batch=3)
    data = TensorDataset(torch.arange(len(ids)), ids)
    loader = bag_dataloader(data, sampler) if mode == "sampler" else DataLoader(data, batch_sampler=sampler)
    _set_sampler_epoch(loader, 3)  # what Lightning's fit loop calls at every epoch
    assert sampler.epoch == 3
    batches = [(rows.tolist(), bags.tolist()) for rows, bags in loader]
    assert [rows for rows, _ in batches] == list(sampler)
    assert all(bags == [ROW_BAGS[i] for i in rows] for rows, bags in batches)


# --- the toys ------------------------------------------------------------------------------------------------------


def test_the_regression_toy_serves_bag_means_in_training_and_instances_in_evaluation():
    data = AggregateRegressionDataModule(num_samples=60, num_features=3, bag_size=10, bags_per_batch=2)
    data.setup()
    train = data.datasets["train"]
    assert torch.bincount(train.bag_ids).tolist() == [10] * 6
    for bag in range(6):  # one response per bag
        assert len(torch.unique(train.responses[train.bag_ids == bag])) == 1
    batches = list(data.train_dataloader())
    assert len(batches) == 3 and all(len(torch.unique(b["bag_id"])) == 2 and len(b["bag_id"]) == 20 for b in batches)
    test = next(iter(data.test_dataloader()))
    assert set(test) == {"image", "target", "index"} and test["target"].dtype == torch.float32
    again = AggregateRegressionDataModule(num_samples=60, num_features=3, bag_size=10, bags_per_batch=2)
    again.setup()
    assert torch.equal(again.datasets["train"].responses, train.responses)  # a function of the seed alone


def test_the_label_proportions_toy_serves_each_bags_class_shares():
    from sklearn.datasets import load_digits

    data = LabelProportionsDataModule(bag_size=7, bags_per_batch=3)
    data.setup()
    train = data.datasets["train"]
    labels = torch.as_tensor(load_digits().target)[data.split_indices["train"]]
    for bag in (0, 5, int(train.bag_ids.max())):
        rows = train.bag_ids == bag
        expected = torch.bincount(labels[rows], minlength=10).float() / rows.sum()
        assert torch.allclose(train.responses[rows], expected.expand(int(rows.sum()), 10))
    assert int(torch.bincount(train.bag_ids).max()) == 7
    val = next(iter(data.val_dataloader()))
    assert val["target"].dtype == torch.int64 and val["image"].shape[1] == 64 and "bag_id" not in val


def test_toy_arguments_are_checked():
    with pytest.raises(ValueError, match="bags_per_batch must be a positive integer"):
        AggregateRegressionDataModule(bags_per_batch=0)
    with pytest.raises(ValueError, match="noise is a standard deviation"):
        AggregateRegressionDataModule(noise=-1.0)
    with pytest.raises(ValueError, match="val_fraction"):
        LabelProportionsDataModule(val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError, match="differ in length"):
        AggregateDataset(torch.zeros(3, 2), torch.zeros(2))


def test_a_restored_datamodule_resumes_its_sampler_after_the_trained_batches():
    data = AggregateRegressionDataModule(num_samples=120, num_features=3, bag_size=4, bags_per_batch=3)
    data.setup()
    state = {**data.state_dict(), "training_position": {"epoch": 2, "batches": 4}}
    restored = AggregateRegressionDataModule(num_samples=120, num_features=3, bag_size=4, bags_per_batch=3)
    restored.load_state_dict(state)
    loader = restored.train_dataloader()
    loader.sampler.set_epoch(2)
    reference = BagBatchSampler(restored.datasets["train"].bag_ids, 3, seed=0)
    reference.set_epoch(2)
    assert [b["index"].tolist() for b in loader] == list(reference)[4:]


# --- the task ------------------------------------------------------------------------------------------------------

FIT = {**QUIET, "accelerator": "cpu", "devices": 1}


def test_the_task_fits_the_regression_toy_and_bag_level_beats_instance_level_on_random_bags():
    results = {}
    for rho in (0.0, 1.0):
        seed_everything(0)
        data = AggregateRegressionDataModule(bags_per_batch=20)
        task = AggregateResponseTask(nn.Linear(20, 1), rho=rho, lr=0.1, scheduler="cosine")
        trainer = Trainer(max_epochs=60, check_val_every_n_epoch=60, **FIT)
        trainer.fit(task, data)
        assert {"train/loss", "train/bag_loss", "train/instance_loss", "val/mse"} <= set(trainer.callback_metrics)
        results[rho] = trainer.test(task, data, verbose=False)[0]["test/mse"]
    # the floor is noise² = 0.25; predicting 0 costs ‖θ‖² + 0.25 ≈ 20; the instance-level fit estimates θ/k
    assert results[0.0] < 0.6 < 5.0 < results[1.0]


def test_the_task_learns_digits_from_label_proportions():
    seed_everything(0)
    task = AggregateResponseTask(MLP(64, 10, width=64, depth=2), rho=0.0, loss="ce", num_classes=10, lr=3e-3)
    trainer = Trainer(max_epochs=8, **FIT)
    trainer.fit(task, LabelProportionsDataModule(bag_size=10, bags_per_batch=8))
    assert {"train/loss", "train/bag_loss", "train/instance_loss", "val/acc"} <= set(trainer.callback_metrics)
    assert float(trainer.callback_metrics["val/acc"]) > 0.6  # chance: 0.1; no training row shows its own class


def test_the_task_refuses_batches_it_cannot_train_or_score_on():
    task = AggregateResponseTask(nn.Linear(3, 1), rho=0.5)
    with pytest.raises(TypeError, match="'bag_id'"):
        task.training_step({"image": torch.zeros(2, 3), "target": torch.zeros(2)}, 0)
    with pytest.raises(ValueError, match="one prediction per row"):
        AggregateResponseTask(nn.Linear(3, 2), rho=0.5)(torch.zeros(2, 3))
    llp = AggregateResponseTask(nn.Linear(3, 4), rho=0.5, loss="ce")
    with pytest.raises(ValueError, match="not proportions"):
        llp.validation_step(
            {"image": torch.zeros(2, 3), "target": torch.full((2, 4), 0.25), "index": torch.arange(2)}, 0
        )
    for kwargs, message in (
        ({"rho": 2.0}, "rho must be a number in \\[0, 1\\]"),
        ({"rho": 0.5, "loss": "l1"}, "Unknown loss"),
        ({"rho": 0.5, "num_classes": 3}, "a regression has none"),
    ):
        with pytest.raises(ValueError, match=message):
            AggregateResponseTask(nn.Linear(3, 1), **kwargs)


@pytest.mark.slow
def test_two_ddp_ranks_agree_and_validate_without_the_padded_duplicate(tmp_path):
    """The harness (entry ``aggregate_response``) proves fit, resume and DDP weights; this adds val/mse on 41 rows."""
    runs = {}
    for name, bags, devices in (("single", 8, {"accelerator": "cpu", "devices": 1}), ("ddp", 4, DDP_SPAWN_CPU)):
        seed_everything(0)
        out = tmp_path / name
        out.mkdir()
        data = aggregate_regression(tmp_path, 4 * bags)
        trainer = Trainer(max_epochs=2, limit_train_batches=4, callbacks=[SaveFinalState(str(out))], **QUIET, **devices)
        trainer.fit(aggregate_response_task(), data)
        runs[name] = (float(trainer.callback_metrics["val/mse"]), out)
    rank0, rank1 = (torch.load(runs["ddp"][1] / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert_same_state(rank0, rank1, atol=0.0, path="rank1 vs rank0")
    single = torch.load(runs["single"][1] / "rank0.pt", weights_only=True)
    assert_same_state(single, rank0, atol=1e-5, path="ddp vs one process")
    # 41 validation rows on two ranks: the padded duplicate is not counted
    assert abs(runs["ddp"][0] - runs["single"][0]) < 1e-5


# --- the card ---------------------------------------------------------------------------------------------------------


def test_the_cards_own_code_example_runs_as_written(tmp_path, monkeypatch):
    code = block("docs/methods/aggregate_responses.md")
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        namespace = run_python(code, "docs/methods/aggregate_responses.md", "aggregate_responses_example")
    trainer = namespace["trainer"]
    assert trainer.global_step == 30 * 6 and namespace["test_mse"] < 0.5  # ‖θ‖² ≈ 20 for a zero predictor


def test_validating_on_bag_rows_is_refused():
    task = AggregateResponseTask(nn.Linear(3, 1), rho=0.5)
    bag_rows = {"image": torch.zeros(2, 3), "target": torch.ones(2), "index": torch.arange(2), "bag_id": torch.zeros(2)}
    with pytest.raises(ValueError, match="val batches carry 'bag_id'"):
        task.validation_step(bag_rows, 0)
