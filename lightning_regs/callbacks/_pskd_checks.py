"""PS-KD's checks of its inputs and of its checkpoint state, kept apart from the callback (callbacks/pskd.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lightning_regs.batch import INDEX, INDEXED_DATASET_HINT, TARGET
from lightning_regs.callbacks.soft_target_callback import read_labels

__all__ = ["check_callback_state", "check_index_range", "read_index"]


def check_callback_state(state: Any) -> None:
    """A named error when ``state`` is not a ``ProgressiveSelfKD.state_dict()`` (missing key, wrong type)."""
    fix = (
        "The checkpoint is not from this version of ProgressiveSelfKD (or another method's state was saved under its "
        "key, or the file was truncated or edited): resume from a checkpoint this callback wrote, or start a new run."
    )
    if not isinstance(state, Mapping):
        raise ValueError(f"ProgressiveSelfKD's checkpoint state is a {type(state).__name__}, not a dict. {fix}")
    missing = [key for key in ("alpha_T", "total_epochs", "table", "fingerprint") if key not in state]
    if missing:
        raise ValueError(f"ProgressiveSelfKD's checkpoint state lacks {missing} (it has {sorted(state)}). {fix}")
    expected = {
        "alpha_T": ((int, float), "a number"),
        "total_epochs": ((int, type(None)), "an int or None"),
        "table": ((dict, type(None)), "a dict or None"),
        "fingerprint": ((dict, type(None)), "a dict or None"),
    }
    for key, (types, what) in expected.items():
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(
                f"ProgressiveSelfKD's checkpoint state has {key}={value!r} ({type(value).__name__}); expected {what}. "
                f"{fix}"
            )
    if state["total_epochs"] is not None and state["total_epochs"] < 1:
        raise ValueError(f"ProgressiveSelfKD's checkpoint state has total_epochs={state['total_epochs']}. {fix}")


def read_index(batch: Any) -> torch.Tensor:
    if not isinstance(batch, Mapping) or INDEX not in batch or TARGET not in batch:
        keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise TypeError(
            f"ProgressiveSelfKD keys its per-sample table by batch['{INDEX}'] and refines batch['{TARGET}'], but the "
            f"batch is {keys}. Yield dict batches with '{TARGET}' (int64 class ids) and '{INDEX}' (each sample's "
            f"position in the training set), as every lightning_regs DataModule does: {INDEXED_DATASET_HINT}."
        )
    labels = read_labels(batch, "ProgressiveSelfKD")
    index = batch[INDEX]
    if index.is_floating_point() or index.shape != labels.shape:
        raise ValueError(
            f"batch['{INDEX}'] must be int64 of shape {tuple(labels.shape)}, one per sample; got dtype {index.dtype} "
            f"and shape {tuple(index.shape)}."
        )
    return index


def check_index_range(index: torch.Tensor, num_samples: int) -> None:
    # A device sync, so it runs only until every index has been seen once (the first epoch).
    if bool(((index < 0) | (index >= num_samples)).any()):
        raise IndexError(
            f"batch['{INDEX}'] holds values in [{int(index.min())}, {int(index.max())}] but the PS-KD table has "
            f"{num_samples} rows: indices must be positions in the training set, 0 <= index < len(train set). Pass "
            "ProgressiveSelfKD(num_samples=N) if the training DataLoader's dataset is not the indexed one."
        )
