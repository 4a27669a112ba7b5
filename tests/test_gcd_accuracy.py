import itertools
import math

import pytest
import torch

from lightning_regs.functional.gcd import gcd_accuracy


def _brute_force(preds, targets, known_mask):
    """Every bijection class -> cluster; the best total, and the (old, new) of every optimal bijection."""
    size = int(max(preds.max(), targets.max())) + 1
    results = []
    for perm in itertools.permutations(range(size)):
        mapped = torch.tensor(perm)[targets]
        correct = (preds == mapped).double()
        old = float(correct[known_mask].mean()) if known_mask.any() else math.nan
        new = float(correct[~known_mask].mean()) if (~known_mask).any() else math.nan
        results.append((float(correct.mean()), old, new))
    best = max(r[0] for r in results)
    return best, {(round(o, 12), round(n, 12)) for a, o, n in results if abs(a - best) < 1e-12}


def _key(value):
    return round(value, 12) if not math.isnan(value) else math.nan


@pytest.mark.parametrize("seed", range(40))
def test_matches_brute_force_over_all_permutations(seed):
    generator = torch.Generator().manual_seed(seed)
    num_classes = int(torch.randint(2, 6, (1,), generator=generator))
    num_clusters = int(torch.randint(2, 6, (1,), generator=generator))
    n = int(torch.randint(3, 25, (1,), generator=generator))
    targets = torch.randint(0, num_classes, (n,), generator=generator)
    preds = torch.randint(0, num_clusters, (n,), generator=generator)
    known_classes = list(range(max(1, num_classes // 2)))
    known_mask = torch.isin(targets, torch.tensor(known_classes))
    best, optimal_old_new = _brute_force(preds, targets, known_mask)
    result = gcd_accuracy(preds, targets, known_classes)
    assert result["all"] == pytest.approx(best, abs=1e-12)
    key = (_key(result["old"]), _key(result["new"]))
    assert any(
        all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(key, candidate, strict=True))
        for candidate in optimal_old_new
    ), (key, optimal_old_new)
    assert gcd_accuracy(preds, targets, known_mask) == result


def test_hand_computed_case():
    # classes 0,1 known, 2 novel; clusters permuted, one novel sample wrong
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2])
    preds = torch.tensor([2, 2, 0, 0, 1, 1, 1, 0])
    result = gcd_accuracy(preds, targets, known=[0, 1])
    assert result == {"all": 7 / 8, "old": 1.0, "new": 3 / 4}


def test_one_matching_over_all_classes_not_separate_per_group():
    # separate matchings would map cluster 0 to class 0 (old) and to class 1 (new) at once; v2 cannot
    targets = torch.tensor([0, 0, 1, 1])
    preds = torch.tensor([0, 0, 0, 0])
    result = gcd_accuracy(preds, targets, known=[0])
    assert result == {"all": 0.5, "old": 1.0, "new": 0.0}


def test_padded_duplicates_are_removed_by_index():
    targets = torch.tensor([0, 1, 1, 0, 0])
    preds = torch.tensor([0, 1, 0, 0, 0])
    indices = torch.tensor([0, 1, 2, 0, 0])  # the last two repeat sample 0, as DistributedSampler pads
    with_padding = gcd_accuracy(preds, targets, [0], indices=indices)
    assert with_padding == gcd_accuracy(preds[:3], targets[:3], [0])


def test_empty_groups_are_nan_and_bad_inputs_raise():
    result = gcd_accuracy(torch.tensor([1, 0]), torch.tensor([0, 1]), known=[0, 1])
    assert result["all"] == 1.0 and math.isnan(result["new"])
    with pytest.raises(ValueError, match="differ in length"):
        gcd_accuracy(torch.tensor([0]), torch.tensor([0, 1]), [0])
    with pytest.raises(ValueError, match="per-sample mask"):
        gcd_accuracy(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([True]))
    with pytest.raises(ValueError, match="non-negative"):
        gcd_accuracy(torch.tensor([-1, 1]), torch.tensor([0, 1]), [0])


_TARGETS = torch.tensor([0, 1, 2, 3, 0, 1, 2])
_PREDS = torch.tensor([1, 0, 2, 2, 1, 1, 3])


def _gather_padded_predictions(rank, world_size):
    import torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler

    from lightning_regs.datamodules.batch import TensorDictDataset

    dataset = TensorDictDataset(torch.zeros(len(_TARGETS), 1), _TARGETS)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
    batch = next(iter(DataLoader(dataset, batch_size=8, sampler=sampler)))
    local = torch.stack([_PREDS[batch["index"]], batch["target"], batch["index"]])
    gathered = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(gathered, local)
    preds, targets, indices = torch.cat(gathered, dim=1)
    return gcd_accuracy(preds, targets, [0, 1], indices=indices), gcd_accuracy(preds, targets, [0, 1])


@pytest.mark.slow
def test_ddp_gathered_metric_after_removing_padding_equals_single_process():
    from tests.helpers.ddp import run_in_ddp

    single = gcd_accuracy(_PREDS, _TARGETS, [0, 1])
    for deduped, padded in run_in_ddp(_gather_padded_predictions):
        assert deduped == single
        assert padded != single  # the repeated sample 0 would bias the metric: the test can fail
