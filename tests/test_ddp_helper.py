import pytest
import torch
import torch.distributed as dist

from tests.helpers.ddp import run_in_ddp


def all_reduce_rank(rank: int, world_size: int, scale: float) -> dict:
    value = torch.tensor([float(rank) * scale])
    dist.all_reduce(value)
    return {"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": value.item()}


def fail_on_rank_one(rank: int, world_size: int) -> None:
    if rank == 1:
        raise RuntimeError("rank one failed")


@pytest.mark.slow
def test_runs_in_two_gloo_processes_and_collects_results():
    results = run_in_ddp(all_reduce_rank, 2.0)
    assert results == [{"rank": 0, "world": 2, "sum": 2.0}, {"rank": 1, "world": 2, "sum": 2.0}]


@pytest.mark.slow
def test_an_exception_in_one_rank_fails_the_call():
    with pytest.raises(Exception, match="rank one failed"):
        run_in_ddp(fail_on_rank_one)
