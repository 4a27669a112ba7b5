"""Cut a layered model into K contiguous, gradient-isolated modules.

A split is written as its *split points*: the index of the last layer of each of the first ``K - 1``
modules (strictly increasing, each below ``len(layers) - 1``). Points come from an explicit list of
layer indices or names, from the papers' tables for CIFAR ResNet-32/110 (:data:`PAPER_SPLITS`,
:data:`INFOPRO_STAR_SPLITS`, written in the papers' ``(stage, block)`` notation), or from
:func:`auto_split`, which minimizes the largest module's saved activation bytes (plus its head) by an
exact dynamic program over all contiguous partitions.

Example::

    >>> from lightning_regs.models import resnet32
    >>> model = resnet32()
    >>> points = resolve_split(model, "paper", K=4)
    >>> [model.layer_names[i] for i in points]
    ['s1b2', 's2b1', 's3b0']
    >>> module_ranges(points, len(model.layers))
    [(0, 4), (4, 8), (8, 12), (12, 16)]
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import nn

from lightning_regs.local_learning.saved_bytes import SavedTensorMeter
from lightning_regs.models.layered import layer_sequence

__all__ = [
    "INFOPRO_STAR_SPLITS",
    "PAPER_SPLITS",
    "auto_split",
    "best_partition",
    "every_layer_split",
    "module_ranges",
    "resolve_split",
    "split_points",
    "stage_block_to_name",
]

# InfoPro's configs.py: (stage, block) after which a module ends; stage 0 is the stem.
PAPER_SPLITS: dict[int, dict[int, tuple[tuple[int, int], ...]]] = {
    32: {
        2: ((2, 1),),
        4: ((1, 2), (2, 1), (3, 0)),
        8: ((1, 0), (1, 2), (1, 4), (2, 1), (2, 3), (3, 0), (3, 2)),
        16: ((0, 0), *((s, b) for s in (1, 2, 3) for b in range(5) if (s, b) != (3, 4))),
    },
    110: {
        2: ((2, 8),),
        4: ((1, 11), (2, 7), (3, 3)),
        8: ((1, 4), (1, 11), (2, 0), (2, 7), (2, 14), (3, 3), (3, 10)),
        16: (
            (1, 1),
            (1, 4),
            (1, 7),
            (1, 10),
            (1, 13),
            (1, 16),
            (2, 1),
            (2, 4),
            (2, 7),
            (2, 11),
            (2, 15),
            (3, 1),
            (3, 5),
            (3, 9),
            (3, 13),
        ),
    },
}
# InfoPro* ("balanced memory"), ResNet-110 on CIFAR.
INFOPRO_STAR_SPLITS: dict[int, dict[int, tuple[tuple[int, int], ...]]] = {
    110: {2: ((1, 14),), 3: ((1, 9), (2, 2)), 4: ((1, 6), (1, 14), (2, 8))},
}
_PRESETS = {"paper": PAPER_SPLITS, "infopro_star": INFOPRO_STAR_SPLITS}


def stage_block_to_name(stage: int, block: int) -> str:
    """The CIFAR ResNet layer name of the papers' ``(stage, block)``: ``(0, 0)`` is ``stem``.

    Example::

        >>> stage_block_to_name(0, 0), stage_block_to_name(2, 8)
        ('stem', 's2b8')
    """
    return "stem" if stage == 0 else f"s{stage}b{block}"


def split_points(layers: nn.Sequential, points: Sequence[int | str]) -> tuple[int, ...]:
    """Validate explicit split points (layer indices or names) and return them as indices.

    A dotted name is also read with ``_`` for ``.``: torchvision's block name ``"layer2.1"`` means the layer
    ``layer2_1`` of :func:`lightning_regs.models.layered`.

    Raises:
        ValueError: a name that is not a layer, an index out of ``[0, len(layers) - 2]``, or points
            that are not strictly increasing.

    Example::

        >>> from lightning_regs.models import resnet20
        >>> split_points(resnet20().layers, ["s1b2", 6])
        (3, 6)
        >>> from torchvision.models import resnet18
        >>> from lightning_regs.models import layered
        >>> split_points(layered(resnet18()).layers, ["layer2.1"])
        (4,)
    """
    names = [name for name, _ in layers.named_children()]
    last = len(names) - 1
    indices = []
    for point in points:
        if isinstance(point, str):
            name = point if point in names else point.replace(".", "_")
            if name not in names:
                raise ValueError(f"Split point {point!r} is not a layer name; the layers are {names}.")
            indices.append(names.index(name))
        elif isinstance(point, numbers.Integral) and not isinstance(point, bool):
            indices.append(int(point))
        else:
            raise ValueError(
                f"Split point {point!r} ({type(point).__name__}) is neither a layer index (an int) nor a layer name; "
                f"the layers are {names}."
            )
    for index in indices:
        if not 0 <= index < last:
            raise ValueError(
                f"Split point {index} is out of range: a module ends after a layer in [0, {last - 1}] "
                f"(the model has {len(names)} layers; the last module always ends at layer {last})."
            )
    if any(b <= a for a, b in itertools.pairwise(indices)):
        raise ValueError(f"Split points must be strictly increasing (each names where a module ends); got {indices}.")
    return tuple(indices)


def module_ranges(points: Sequence[int], num_layers: int) -> list[tuple[int, int]]:
    """``[start, stop)`` layer ranges of the ``len(points) + 1`` modules.

    Example::

        >>> module_ranges((1, 3), 6)
        [(0, 2), (2, 4), (4, 6)]
    """
    starts = [0, *(p + 1 for p in points)]
    stops = [*(p + 1 for p in points), num_layers]
    return list(zip(starts, stops, strict=True))


def every_layer_split(num_layers: int, d: int) -> tuple[int, ...]:
    """AugLocal's split: every layer its own module except the last ``d + 1``, which train with the classifier.

    ``K = num_layers - d`` modules: layers ``0 .. L-d-2`` alone, then layers ``L-d-1 .. L-1``.

    Example::

        >>> every_layer_split(6, 2)
        (0, 1, 2)
        >>> module_ranges(every_layer_split(6, 2), 6)
        [(0, 1), (1, 2), (2, 3), (3, 6)]
    """
    if not isinstance(d, int) or not 1 <= d <= num_layers - 1:
        raise ValueError(
            f"AugLocal depth d must be an integer in [1, {num_layers - 1}] for a model with {num_layers} layers; "
            f"got {d!r}."
        )
    return tuple(range(num_layers - d - 1))


def _check_k(K: int, num_layers: int) -> None:
    if not isinstance(K, int) or K < 1:
        raise ValueError(f"K (the number of modules) must be a positive integer, got {K!r}.")
    if num_layers < K:
        raise ValueError(
            f"K={K} is larger than the model's {num_layers} layers: each module needs at least one layer. "
            f"Use K <= {num_layers}."
        )


def best_partition(cost: Callable[[int, int], float], num_layers: int, K: int) -> tuple[int, ...]:
    """Split points minimizing ``max_j cost(start_j, stop_j)`` over all partitions into K contiguous modules.

    Exact dynamic program, ``O(K · L²)`` cost look-ups; ties go to the partition whose earliest cuts are
    smallest.

    Example::

        >>> sizes = [4, 1, 1, 1, 1, 4]
        >>> best_partition(lambda a, b: sum(sizes[a:b]), 6, 3)
        (0, 4)
    """
    _check_k(K, num_layers)
    inf = float("inf")
    # best[k][n]: the smallest possible largest cost when the first n layers form k modules.
    best = [[inf] * (num_layers + 1) for _ in range(K + 1)]
    cut = [[0] * (num_layers + 1) for _ in range(K + 1)]
    best[0][0] = 0.0
    for k in range(1, K + 1):
        for n in range(k, num_layers - (K - k) + 1):
            for m in range(k - 1, n):
                if best[k - 1][m] == inf:
                    continue
                value = max(best[k - 1][m], cost(m, n))
                if value < best[k][n]:
                    best[k][n], cut[k][n] = value, m
    points, n = [], num_layers
    for k in range(K, 1, -1):
        n = cut[k][n]
        points.append(n - 1)
    return tuple(reversed(points))


def auto_split(
    layers: nn.Sequential,
    K: int,
    sample: torch.Tensor,
    head_for: Callable[[int, torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> tuple[tuple[int, ...], float]:
    """Split points minimizing the largest module's saved activation bytes plus its head's.

    One forward pass over ``sample`` records which storages every layer saves for backward (weights and
    buffers excluded); ``head_for(i, output_i)`` returns the loss function of the head that would sit
    after layer ``i`` (an auxiliary head, or the classifier and its loss for the last layer); its saved
    storages are measured on the same pass. A module's cost is the bytes of the union of its layers' and
    its head's storages, which is what is alive when its local backward starts.

    Returns:
        The split points and the floor: the largest module's cost in bytes.

    Example::

        >>> from lightning_regs.models import MLP
        >>> model = MLP(in_features=8, num_classes=2, width=16, depth=4)
        >>> points, floor = auto_split(model.layers, 2, torch.randn(4, 8))
        >>> len(points), floor > 0
        (1, True)
    """
    _check_k(K, len(layers))
    layer_sets, head_sets, sizes = _saved_storages(layers, sample, head_for)

    def cost(start: int, stop: int) -> float:
        storages = set().union(*layer_sets[start:stop], head_sets[stop - 1])
        return float(sum(sizes[s] for s in storages))

    points = best_partition(cost, len(layers), K)
    floor = max(cost(a, b) for a, b in module_ranges(points, len(layers)))
    return points, floor


def _saved_storages(
    layers: nn.Sequential,
    sample: torch.Tensor,
    head_for: Callable[[int, torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None,
) -> tuple[list[set[int]], list[set[int]], dict[int, int]]:
    meter = SavedTensorMeter(exclude=[layers])
    layer_sets: list[set[int]] = []
    head_sets: list[set[int]] = []
    outputs = []
    h = sample
    buffers = {name: b.clone() for name, b in layers.named_buffers()}  # the probe must not move BN statistics
    # Everything stays alive until the end, so storage pointers are unique across the whole pass.
    with meter:
        for layer in layers:
            meter.reset_record()
            h = layer(h)
            layer_sets.append(meter.recorded())
            outputs.append(h)
        for index, out in enumerate(outputs):
            meter.reset_record()
            keep = head_for(index, out)(out) if head_for is not None else None
            head_sets.append(meter.recorded())
            outputs[index] = (out, keep)
    with torch.no_grad():
        for name, b in layers.named_buffers():
            b.copy_(buffers[name])
    return layer_sets, head_sets, meter.sizes


def resolve_split(
    model: nn.Module,
    split: str | Sequence[int | str] = "auto",
    K: int | None = None,
    sample: torch.Tensor | None = None,
    head_for: Callable[[int, torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> tuple[int, ...]:
    """Split points of ``model`` for a preset name (``auto``, ``paper``, ``infopro_star``) or explicit points.

    Args:
        model: a model with a layer sequence (see :func:`lightning_regs.models.layer_sequence`).
        split: ``"auto"`` (needs ``sample``), ``"paper"`` (InfoPro's tables for CIFAR ResNet-32/110),
            ``"infopro_star"`` (the memory-balanced ResNet-110 splits) or a list of layer indices/names.
        K: the number of modules; required for presets, checked against explicit points.
        sample: an input batch for ``"auto"``.
        head_for: see :func:`auto_split`.

    Raises:
        TypeError: the model has no layer sequence.
        ValueError: an unknown preset, a preset missing for this model and K, K larger than the layers,
            a K that disagrees with the explicit points, or bad points.
    """
    layers = layer_sequence(model)
    if isinstance(split, str):
        if K is None:
            raise ValueError(f"split={split!r} needs K, the number of modules.")
        _check_k(K, len(layers))
        if K == 1:
            return ()
        if split == "auto":
            if sample is None:
                raise ValueError("split='auto' measures activation memory on a sample batch: pass `sample`.")
            return auto_split(layers, K, sample, head_for)[0]
        if split not in _PRESETS:
            raise ValueError(f"Unknown split {split!r}: use 'auto', 'paper', 'infopro_star' or a list of layers.")
        depth = getattr(model, "depth", None)
        table = _PRESETS[split].get(depth, {})
        if K not in table:
            available = {d: sorted(t) for d, t in _PRESETS[split].items()}
            raise ValueError(
                f"No {split!r} split for {type(model).__name__} (depth {depth}) with K={K}; the tables cover "
                f"CIFAR ResNet depth -> K: {available}. Use split='auto' or give the split points."
            )
        return split_points(layers, [stage_block_to_name(s, b) for s, b in table[K]])
    points = split_points(layers, list(split))
    if K is not None and len(points) + 1 != K:
        raise ValueError(f"K={K} but {len(points)} split points give {len(points) + 1} modules; drop K or fix it.")
    return points
