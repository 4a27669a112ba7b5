"""The built-in tables of the papers' configs: split presets and InfoPro's λ, and the task-loss names."""

from __future__ import annotations

from typing import get_args

import pytest

from lightning_regs.local_learning.heads import INFOPRO_LAMBDAS, InfoProHead, TaskLoss, infopro_lambdas
from lightning_regs.local_learning.splits import INFOPRO_STAR_SPLITS, PAPER_SPLITS

BLOCKS_PER_STAGE = {32: 5, 110: 18}  # CIFAR ResNet-(6n+2): n blocks per stage


@pytest.mark.parametrize("table", [PAPER_SPLITS, INFOPRO_STAR_SPLITS], ids=["paper", "infopro_star"])
def test_every_split_preset_has_k_minus_one_ordered_cuts_inside_the_network(table):
    for depth, presets in table.items():
        for K, cuts in presets.items():
            assert len(cuts) == K - 1, (depth, K)
            assert list(cuts) == sorted(set(cuts)), (depth, K)  # strictly increasing (stage, block)
            for stage, block in cuts:
                assert (stage, block) == (0, 0) or (1 <= stage <= 3 and 0 <= block < BLOCKS_PER_STAGE[depth])
            assert cuts[-1] != (3, BLOCKS_PER_STAGE[depth] - 1), "the last module must keep at least one block"


def test_every_infopro_lambda_preset_gives_each_module_a_nonnegative_nonzero_weight():
    for (depth, K), endpoints in INFOPRO_LAMBDAS.items():
        weights = infopro_lambdas(K, endpoints)
        assert len(weights) == K - 1
        assert weights[0] == pytest.approx(endpoints[:2]), (depth, K)
        assert all(recon >= 0 and task >= 0 and recon + task > 0 for recon, task in weights), (depth, K)
        assert K in PAPER_SPLITS[depth]  # each λ preset has its split


def test_the_task_loss_names_are_the_ones_the_head_accepts():
    assert set(get_args(TaskLoss)) == {"cross_entropy", "contrast"}
    for name in get_args(TaskLoss):
        assert InfoProHead((16, 8, 8), 10, image_shape=(3, 32, 32), task_loss=name).task_loss == name
    with pytest.raises(ValueError, match="task loss"):
        InfoProHead((16, 8, 8), 10, image_shape=(3, 32, 32), task_loss="mse")  # type: ignore[arg-type]
