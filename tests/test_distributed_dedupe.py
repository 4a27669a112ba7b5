import pytest
import torch
from torch.utils.data import DistributedSampler

from lightning_regs.distributed import all_gather_variable, gather_unique_by_index, unique_by_index
from lightning_regs.functional.anomaly import image_auroc
from tests.helpers.ddp import run_in_ddp


def brute_force_first(index, *tensors):
    seen, keep = set(), []
    for position, value in enumerate(index.tolist()):
        if value not in seen:
            seen.add(value)
            keep.append(position)
    keep.sort(key=lambda position: index[position].item())
    keep = torch.tensor(keep, dtype=torch.long)
    return (index[keep], *(tensor[keep] for tensor in tensors))


@pytest.mark.parametrize("seed", range(4))
def test_unique_by_index_keeps_the_first_occurrence_like_brute_force(seed):
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, 20, (60,), generator=generator)
    values = torch.arange(60)  # distinct per row: shows WHICH occurrence was kept
    maps = torch.randn(60, 2, 3, generator=generator)
    result = unique_by_index(index, values, maps)
    expected = brute_force_first(index, values, maps)
    for got, want in zip(result, expected, strict=True):
        assert torch.equal(got, want)
    assert torch.equal(result[0], index.unique())


def test_unique_by_index_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="tensor 1 has 3 rows but index has 2"):
        unique_by_index(torch.tensor([0, 1]), torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="1-D tensor"):
        unique_by_index(torch.zeros(2, 2, dtype=torch.long))


def test_single_process_gather_is_unique_by_index():
    index = torch.tensor([4, 1, 4, 0])
    scores = torch.tensor([0.4, 0.1, 9.0, 0.0])
    for got, want in zip(gather_unique_by_index(index, scores), unique_by_index(index, scores), strict=True):
        assert torch.equal(got, want)
    assert all_gather_variable(scores) is scores


NUM_SAMPLES = 7  # not divisible by 2: DistributedSampler pads one sample


def score_of(index: torch.Tensor) -> torch.Tensor:
    return torch.sin(index.double() * 1.7) * 100  # raw scores far outside [0, 1]


def label_of(index: torch.Tensor) -> torch.Tensor:
    return (index % 3 == 0).long()


def _ranks(rank: int, world_size: int) -> dict:
    # variable sizes, bool and 2-D payloads, an empty rank
    sizes = {0: 3, 1: 5}
    index = torch.arange(sizes[rank]) + rank * 2  # ranks overlap on some indices
    payload = torch.stack([index * 10 + rank, -index], dim=1)
    flags = index % 2 == 0
    empty = torch.zeros(0, 4) if rank == 0 else torch.ones(2, 4)
    sampler = DistributedSampler(range(NUM_SAMPLES), num_replicas=world_size, rank=rank, shuffle=True, seed=5)
    seen = torch.tensor(list(sampler))
    naive = all_gather_variable(seen)
    unique_index, scores, labels = gather_unique_by_index(seen, score_of(seen), label_of(seen))
    return {
        "gathered": all_gather_variable(index),
        "unique": gather_unique_by_index(index, payload, flags),
        "empty": all_gather_variable(empty),
        "seen": seen,
        "naive": naive,
        "unique_index": unique_index,
        "auroc": float(image_auroc(scores, labels)),
    }


@pytest.mark.slow
def test_gather_across_two_processes_handles_variable_sizes_and_sampler_padding():
    results = run_in_ddp(_ranks)
    index = torch.cat([torch.arange(3), torch.arange(5) + 2])
    payload = torch.cat([torch.stack([torch.arange(3) * 10, -torch.arange(3)], 1)])
    payload = torch.cat([payload, torch.stack([(torch.arange(5) + 2) * 10 + 1, -(torch.arange(5) + 2)], 1)])
    expected = brute_force_first(index, payload, index % 2 == 0)
    for result in results:  # every rank gets the same answer
        assert torch.equal(result["gathered"], index)
        for got, want in zip(result["unique"], expected, strict=True):
            assert torch.equal(got, want)
        assert result["unique"][2].dtype == torch.bool
        assert torch.equal(result["empty"], torch.ones(2, 4))
    # the sampler padded one duplicate; the dedupe removes exactly it
    assert len(results[0]["seen"]) == len(results[1]["seen"]) == 4 and len(results[0]["naive"]) == 8
    assert sorted(results[0]["naive"].tolist()) != list(range(NUM_SAMPLES))
    assert results[0]["unique_index"].tolist() == list(range(NUM_SAMPLES))
    everything = torch.arange(NUM_SAMPLES)
    single = float(image_auroc(score_of(everything), label_of(everything)))
    assert results[0]["auroc"] == results[1]["auroc"] == pytest.approx(single, abs=1e-12)
