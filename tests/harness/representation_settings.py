"""The harness settings of the representation monitors (neural collapse, DSE/DSMI): module-level factories."""

from __future__ import annotations

import lightning.pytorch as pl

from lightning_regs import callbacks as cb

__all__ = ["dse", "neural_collapse"]


def neural_collapse() -> list[pl.Callback]:
    # An odd point count (rank 1's shard is a row short) and feature_cache_mb=0: the NC4 pass runs the forwards again.
    return [cb.NeuralCollapseMonitor(num_points=41, batch_size=16, feature_cache_mb=0, max_overhead=None, plot=False)]


def dse() -> list[pl.Callback]:
    return [
        cb.DiffusionSpectralEntropyMonitor(
            layers=["penultimate", "backbone.layers.fc1"], sets=["train", "heldout"], num_points=41, num_clusters=4,
            batch_size=16, max_overhead=None, plot=False,
        )
    ]  # fmt: skip
