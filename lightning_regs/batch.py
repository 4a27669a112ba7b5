"""The batch contract: every key a batch may carry, the one label reader, and the one unpacking of a step.

This module is the ground floor of the library: it imports only torch, and every other module reads and writes
batches through the names defined here (no other module defines a batch key; ``tests/test_batch_contract.py``
checks it). ``docs/design.md`` has the table of keys with who writes each.

Example::

    >>> import torch
    >>> batch = {"image": torch.zeros(2, 1, 8, 8), "target": torch.tensor([3, 1]), "index": torch.tensor([0, 5])}
    >>> step = read_step(batch)
    >>> step.labels.tolist(), step.index.tolist()
    ([3, 1], [0, 5])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import torch

__all__ = [
    "CLEAN_IMAGE",
    "CONTRACT",
    "HARD_TARGET",
    "IMAGE",
    "INDEX",
    "BAG_ID",
    "CATEGORY",
    "INSTANCE_MASK",
    "INSTANCE_TARGET",
    "LABEL",
    "LABELED",
    "MASK",
    "MIX_LAMBDA",
    "MIX_PARTNER",
    "SAMPLE_TARGET",
    "TARGET",
    "TRUE_TARGET",
    "StepBatch",
    "class_ids",
    "read_inputs",
    "read_step",
    "unpack_batch",
]

# Every DataModule.
IMAGE = "image"
TARGET = "target"
INDEX = "index"
# Target-rewriting callbacks (SoftTargetCallback): the original class ids once ``target`` is soft.
HARD_TARGET = "hard_target"
# Generalized category discovery (CUB200DataModule(gcd=True), the GCD digits).
LABELED = "labeled"
TRUE_TARGET = "true_target"
# Anomaly detection (MVTecADDataModule).
MASK = "mask"
LABEL = "label"
CATEGORY = "category"
# Input-rewriting callbacks (MixUp, CutMix): what was mixed into each row, and the rows before mixing.
MIX_PARTNER = "mix_partner"
MIX_LAMBDA = "mix_lambda"
SAMPLE_TARGET = "sample_target"
CLEAN_IMAGE = "clean_image"
# Bags of instances (multiple-instance learning): ``image`` is (B, N, ...) with one ``target`` per bag; which of the
# padded instances of each bag are real, and their own labels where known (evaluation only).
INSTANCE_MASK = "instance_mask"
INSTANCE_TARGET = "instance_target"
# Aggregate responses (learning from label proportions): rows are instances, ``target`` is their bag's response.
BAG_ID = "bag_id"

#: Every key of the contract: (type and shape, who writes it, meaning). ``docs/design.md`` renders the same table.
CONTRACT: dict[str, tuple[str, str, str]] = {
    IMAGE: ("float (B, C, H, W)", "every DataModule; input-rewriting callbacks", "the normalized inputs"),
    TARGET: ("int64 (B,) or float (B, C)", "DataModules; SoftTargetCallback", "class ids, or class probabilities"),
    INDEX: ("int64 (B,)", "every DataModule; IndexedDataset", "the sample's position in its stage's data set"),
    HARD_TARGET: ("int64 (B,)", "the first SoftTargetCallback of a step", "the class ids once target is soft"),
    LABELED: ("bool (B,)", "CUB200DataModule(gcd=True), GCD digits", "whether the row's label may be trained on"),
    TRUE_TARGET: ("int64 (B,)", "CUB200DataModule(gcd=True), GCD digits", "every row's real class (evaluation)"),
    MASK: ("float (B, 1, H, W) in {0, 1}", "MVTecADDataModule", "the defect mask (zeros for good images)"),
    LABEL: ("int64 (B,)", "MVTecADDataModule", "0 good, 1 anomalous"),
    CATEGORY: ("int64 (B,)", "MVTecADDataModule", "position of the image's category in its category_names"),
    MIX_PARTNER: ("int64 (B,)", "input-rewriting callbacks", "the batch row whose sample was mixed into this row"),
    MIX_LAMBDA: ("float (B,)", "input-rewriting callbacks", "the weight of the row's own sample (1: unmixed)"),
    SAMPLE_TARGET: ("float (B, C)", "input-rewriting callbacks", "each row's own target distribution, unmixed"),
    CLEAN_IMAGE: ("like image", "input-rewriting callbacks", "the inputs before they were rewritten"),
    INSTANCE_MASK: ("bool (B, N)", "bag DataModules", "which of a bag's N padded instances are real"),
    INSTANCE_TARGET: ("int64 (B, N)", "bag DataModules", "each instance's own label where known, else -1 (evaluation)"),
    BAG_ID: ("int64 (B,)", "aggregate-response DataModules", "the bag of each instance row (target: its response)"),
}

# How to get dict batches out of your own data set; every error about a non-dict batch or a missing key ends with it.
INDEXED_DATASET_HINT = (
    "wrap your data set as `lightning_regs.datamodules.IndexedDataset(dataset)`, e.g. "
    "`DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=64)` (rename dict keys with "
    "`IndexedDataset(dataset, keys={'img': 'image', 'label': 'target'})`)"
)


def unpack_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(image, target)`` from a dict batch, or from an ``(image, target)`` pair.

    Raises:
        TypeError: when the batch is neither, with the keys that are expected.

    Example::

        >>> image, target = unpack_batch((torch.zeros(2, 3), torch.tensor([1, 0])))
        >>> target.tolist()
        [1, 0]
    """
    if isinstance(batch, Mapping):
        missing = [key for key in (IMAGE, TARGET) if key not in batch]
        if not missing:
            return batch[IMAGE], batch[TARGET]
        raise TypeError(
            f"The batch is a dict without {missing}; it has {sorted(batch)}. lightning_regs tasks expect "
            f"dict batches with '{IMAGE}' (float images), '{TARGET}' (int64 class ids or (B, C) probabilities) "
            f"and '{INDEX}' (int64 sample positions), as every lightning_regs DataModule yields; "
            f"{INDEXED_DATASET_HINT}."
        )
    if isinstance(batch, Sequence) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(
        f"Cannot read a batch of type {type(batch).__name__}. Yield dicts with '{IMAGE}', '{TARGET}' and "
        f"'{INDEX}' (or at least an (image, target) pair) from your DataLoader: {INDEXED_DATASET_HINT}."
    )


def class_ids(batch: Any, soft: Literal["raise", "argmax"] = "raise") -> torch.Tensor:
    """The int64 class ids of a batch: ``hard_target`` when a callback softened ``target``, else ``target``.

    The one label reader of the library. Measure accuracy against this in your own ``training_step``: it is
    right whether or not a target-softening callback (PS-KD, label smoothing, MixUp) ran on the batch. Under
    MixUp/CutMix these are each row's own labels; :func:`lightning_regs.functional.mixed_accuracy` also credits
    the mixed-in label.

    Args:
        batch: a dict batch, or an ``(image, target)`` pair.
        soft: what to do with ``(B, C)`` probabilities that came without ``hard_target`` (soft in the data):
            ``"raise"`` a named error, or take their ``"argmax"``.

    Raises:
        TypeError: when the batch is neither a dict with ``target`` nor a pair.
        ValueError: when ``target`` holds ``(B, C)`` probabilities, there is no ``hard_target`` and ``soft="raise"``.

    Example::

        >>> class_ids({"target": torch.tensor([2, 0])}).tolist()
        [2, 0]
        >>> class_ids({"target": torch.tensor([[0.1, 0.9], [0.8, 0.2]]), "hard_target": torch.tensor([1, 0])}).tolist()
        [1, 0]
        >>> class_ids((torch.zeros(1, 4), torch.tensor([[0.3, 0.7]])), soft="argmax").tolist()
        [1]
    """
    if isinstance(batch, Mapping):
        if TARGET not in batch:
            raise TypeError(
                f"class_ids reads a dict batch with '{TARGET}', got a dict with keys {sorted(batch)}: "
                f"{INDEXED_DATASET_HINT}."
            )
        if HARD_TARGET in batch:
            return batch[HARD_TARGET]
        target = batch[TARGET]
    elif isinstance(batch, Sequence) and len(batch) == 2:
        target = batch[1]
    else:
        raise TypeError(
            f"class_ids reads a dict batch with '{TARGET}' (or an (image, target) pair), got a "
            f"{type(batch).__name__}: {INDEXED_DATASET_HINT}."
        )
    if target.is_floating_point() and target.dim() == 2:
        if soft == "argmax":  # after a mixing, each row's own target, not the mixture
            own = batch.get(SAMPLE_TARGET, target) if isinstance(batch, Mapping) else target
            return own.argmax(dim=-1)
        raise ValueError(
            f"batch['{TARGET}'] holds (B, C) probabilities and the batch has no '{HARD_TARGET}': the class ids are "
            "not known (targets that are soft in the data, one-hot labels or MixUp in the DataLoader, carry none). "
            "Yield class ids from the data (the MixUp callback keeps them), or use class_ids(batch, soft='argmax') "
            "to take each row's most probable class."
        )
    return target


def read_inputs(batch: Any) -> torch.Tensor:
    """The inputs alone, for prediction: ``batch["image"]``, the first tensor of a list or tuple, or the tensor itself.

    Example::

        >>> read_inputs([torch.zeros(2, 3)]).shape  # what a DataLoader over TensorDataset(x) yields
        torch.Size([2, 3])
    """
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping) and IMAGE in batch:
        return batch[IMAGE]
    if isinstance(batch, Sequence) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
    raise TypeError(
        f"Cannot find the inputs in a batch of {keys}: yield '{IMAGE}' in dict batches, or (x, ...) tuples."
    )


class StepBatch(NamedTuple):
    """What a training or evaluation step reads from a batch, unpacked once by :func:`read_step`."""

    image: torch.Tensor
    target: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor | None
    batch: Any


def read_step(batch: Any) -> StepBatch:
    """Unpack ``batch`` once: inputs, target (ids or probabilities), class ids (:func:`class_ids`), index.

    Soft targets that came soft from the data give the arg-max as class ids.

    Example::

        >>> step = read_step((torch.zeros(2, 4), torch.tensor([[0.9, 0.1], [0.2, 0.8]])))
        >>> step.labels.tolist(), step.index is None
        ([0, 1], True)
    """
    image, target = unpack_batch(batch)
    index = batch.get(INDEX) if isinstance(batch, Mapping) else None
    return StepBatch(image, target, class_ids(batch, soft="argmax"), index, batch)
