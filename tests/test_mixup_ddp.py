"""Under DDP a mixing pairs rows within each rank and every rank draws the same λ: proven against one process.

Two ``ddp_spawn`` processes of the harness's ``mixup`` entry must end where one process ends when that process
mixes each global batch as the two ranks do: rows ``r, r + 2, ...`` (rank ``r``'s share, ``SequentialDigits``)
paired among themselves with the one permutation and λ both ranks drew.
"""

from __future__ import annotations

from dataclasses import replace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lightning_regs.batch import IMAGE
from lightning_regs.callbacks import MixUp, Rewrite
from lightning_regs.functional.mixing import draw_mix, mix_inputs
from tests.harness.compare import assert_same_state
from tests.harness.registry import setting
from tests.harness.runs import run_ddp, run_uninterrupted

WORLD_SIZE = 2


class PairedPerRank(MixUp):
    """One process mixing a global batch as ``WORLD_SIZE`` ranks each mix their own rows (the same draw)."""

    @property
    def state_key(self) -> str:
        return "MixUp"

    def rewrite(self, trainer, pl_module, batch, rng: np.random.Generator) -> Rewrite:
        image = batch[IMAGE]
        draw = draw_mix(len(image) // WORLD_SIZE, rng, self.mixup_alpha, 0.0, 0.0, self.per_sample)
        partner = torch.empty(len(image), dtype=torch.long)
        lam = torch.empty(len(image))
        for rank in range(WORLD_SIZE):
            rows = torch.arange(rank, len(image), WORLD_SIZE)
            partner[rows], lam[rows] = rows[draw.partner], draw.lam
        return Rewrite(mix_inputs(image, partner, lam), partner, lam)


def paired_per_rank() -> list[pl.Callback]:
    (mixup,) = setting("mixup").make_callbacks()
    return [PairedPerRank(alpha=mixup.alpha, seed=mixup.seed)]


def test_the_emulation_pairs_rows_of_one_rank_only():
    batch = {"image": torch.randn(8, 1, 2, 2), "target": torch.arange(8)}
    PairedPerRank(alpha=0.4, num_classes=8).rewrite_batch(None, None, batch)
    assert bool((batch["mix_partner"] % WORLD_SIZE == torch.arange(8) % WORLD_SIZE).all())


@pytest.mark.slow
def test_two_ranks_equal_one_process_that_pairs_per_rank(tmp_path):
    entry = setting("mixup")
    rank0, rank1 = run_ddp(entry, tmp_path / "ddp")
    emulated = run_uninterrupted(replace(entry, make_callbacks=paired_per_rank), tmp_path / "one")
    assert_same_state(rank0, rank1, atol=0.0, path="rank1 vs rank0")
    # (the emulation is a test class, outside the package: final_state keeps only the package's callbacks' states)
    assert_same_state(emulated["weights"], rank0["weights"], atol=entry.atol, path="ddp vs one process per rank")
    # and the pairing matters: one process pairing across the whole batch ends elsewhere
    across = run_uninterrupted(entry, tmp_path / "across")
    with pytest.raises(AssertionError):
        assert_same_state(across["weights"], rank0["weights"], atol=entry.atol, path="ddp vs one process")
