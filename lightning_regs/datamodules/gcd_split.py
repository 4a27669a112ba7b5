"""The generalized category discovery (GCD) split, written once: known classes, labelled images, what a target means.

Every GCD data set of the library (:class:`~lightning_regs.datamodules.CUB200DataModule` with ``gcd=True``,
:class:`~lightning_regs.datamodules.digits_gcd.DigitsGCDDataModule`,
:class:`~lightning_regs.datamodules.GCDDataset`) draws its split with these functions, and they mean one thing:

* **Classes are named by the data set's own 0-based ids.** ``known_classes`` (the "Old" classes, whose images may
  be labelled) are given in those ids, in any order; every other class is novel ("New").
* **Targets put the known classes first** (:func:`known_first_order`): target ``t`` is the data set's class
  ``class_order[t]``, the known classes ``0..K-1`` in the order given, then the novel ones. This is SimGCD's and
  LegoGCD's convention (their ``get_datasets`` remaps targets the same way) and the default of
  :class:`~lightning_regs.tasks.GCDClassifier` (``known_classes=range(num_known)``). The DataModules apply it;
  :class:`~lightning_regs.datamodules.GCDDataset` serves your own tensors with your ids unchanged (its order is the
  identity), so the classifier is then given the same ``known_classes``.
* **Labelled images** are a seeded share of the known classes' training images; every other training image is
  unlabelled, its ``target`` ``-1`` (:func:`hide_unlabeled`), its class only in ``true_target`` (evaluation only).
  Two draws are kept, each where it produced published numbers: :func:`draw_labeled_per_class` (a share of each
  known class, rounded: the digits and ``GCDDataset``, whose figures are in ``docs/methods/lego_gcd.md``) and
  :func:`draw_labeled_pooled` (a share of all known-class images together, truncated: CUB, as SimGCD's
  ``subsample_instances``; the checkpoints and fingerprints of CUB's GCD split depend on it).

Example::

    >>> order = known_first_order([5, 6], num_classes=8)
    >>> order.tolist(), targets_in_order(torch.tensor([5, 0, 6, 7]), order).tolist()
    ([5, 6, 0, 1, 2, 3, 4, 7], [0, 2, 1, 7])
    >>> truth = torch.tensor([0, 0, 1, 1, 2, 2])
    >>> labeled = draw_labeled_per_class(truth, [0, 1], 0.5, torch.Generator().manual_seed(0))
    >>> int(labeled.sum()), hide_unlabeled(truth, labeled).tolist().count(-1)
    (2, 4)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from lightning_regs.batch import LABELED, TRUE_TARGET
from lightning_regs.datamodules.files import read_json
from lightning_regs.datamodules.indexed import indexed_sample

__all__ = [
    "SSB_SPLIT_FILE",
    "GCDRows",
    "check_known_classes",
    "draw_labeled_per_class",
    "draw_labeled_pooled",
    "hide_unlabeled",
    "known_classes_state",
    "known_first_order",
    "read_split_file",
    "targets_in_order",
]

#: The Semantic Shift Benchmark's CUB split (``gcd_split_file="ssb"``), shipped with its source.
SSB_SPLIT_FILE = Path(__file__).parent / "data" / "cub_ssb_split.json"
_KNOWN_KEY = "known_classes"


def known_first_order(known: Sequence[int], num_classes: int, novel: Sequence[int] | None = None) -> torch.Tensor:
    """``class_order``: the known classes in the order given, then the novel ones (``novel``, else ascending).

    Target ``t`` is the data set's class ``class_order[t]``.
    """
    known = [int(c) for c in known]
    rest = [c for c in range(num_classes) if c not in set(known)] if novel is None else [int(c) for c in novel]
    return torch.tensor(known + rest, dtype=torch.long)


def targets_in_order(original: torch.Tensor, class_order: torch.Tensor) -> torch.Tensor:
    """The data set's class ids ``original`` as targets: target ``t`` is class ``class_order[t]``."""
    target_of = torch.empty(len(class_order), dtype=torch.long)
    target_of[class_order] = torch.arange(len(class_order))
    return target_of[original]


def draw_labeled_per_class(
    truth: torch.Tensor,
    known: Sequence[int],
    fraction: float,
    generator: torch.Generator,
    on_empty: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """``(N,)`` bool: of each known class in turn, ``round(fraction · its images)`` drawn with ``generator``.

    ``on_empty(class, images)`` is called, before the next class is drawn, for a known class none of whose images is
    drawn (it raises the caller's named error).
    """
    labeled = torch.zeros(len(truth), dtype=torch.bool)
    for c in known:
        rows = (truth == c).nonzero().flatten()
        drawn = rows[torch.randperm(len(rows), generator=generator)[: round(fraction * len(rows))]]
        if not len(drawn) and on_empty is not None:
            on_empty(int(c), len(rows))
        labeled[drawn] = True
    return labeled


def draw_labeled_pooled(candidates: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted positions of ``int(fraction · len)`` of the ``candidates`` (bool, ``True`` on known-class images).

    One draw over all known-class images together, from a generator seeded with ``seed`` (SimGCD's
    ``subsample_instances``).
    """
    positions = torch.nonzero(candidates).flatten()
    order = torch.randperm(len(positions), generator=torch.Generator().manual_seed(seed))
    return positions[order[: int(fraction * len(positions))]].sort().values


def hide_unlabeled(truth: torch.Tensor, labeled: torch.Tensor) -> torch.Tensor:
    """The training targets: the class where ``labeled``, else ``-1`` (the labels a GCD method may learn from)."""
    return torch.where(labeled, truth, -1)


def read_split_file(path: str | Path, num_classes: int, name: str | None = None) -> tuple[list[int], list[int]]:
    """``(known, novel)`` from a JSON split file: ``known_classes`` and ``unknown_classes``, 0-based.

    ``unknown_classes`` is a list, or lists under ``Easy``/``Medium``/``Hard`` as in the SSB splits (read Hard,
    Medium, Easy, as SimGCD does); together they must hold every id ``0..num_classes-1`` once.
    ``name`` is how messages call the file (default ``path``).
    """
    name = str(path) if name is None else name
    spec = read_json(path, "Fix it, or pass known_classes instead.")
    if not isinstance(spec, dict) or _KNOWN_KEY not in spec or "unknown_classes" not in spec:
        raise ValueError(f"{name} must be a JSON object with 'known_classes' and 'unknown_classes'.")
    unknown = spec["unknown_classes"]
    if isinstance(unknown, dict):  # SSB: difficulty -> classes, listed Hard + Medium + Easy as in SimGCD
        unknown = [c for level in ("Hard", "Medium", "Easy") for c in unknown.get(level, [])]
    known, novel = [int(c) for c in spec[_KNOWN_KEY]], [int(c) for c in unknown]
    if sorted(known + novel) != list(range(num_classes)):
        raise ValueError(
            f"{name}: known_classes and unknown_classes must together hold every class id "
            f"0..{num_classes - 1} exactly once (0-based)."
        )
    return known, novel


def known_classes_state(known: Sequence[int]) -> dict[str, Any]:
    """The checkpoint entry of the known classes (empty without a GCD split)."""
    return {_KNOWN_KEY: torch.tensor(list(known), dtype=torch.long)} if known else {}


def check_known_classes(state_dict: Mapping[str, Any], known: Sequence[int], fix: str) -> None:
    """Refuse a checkpoint whose known classes are not ``known``: its targets would mean other classes."""
    if _KNOWN_KEY not in state_dict:
        return
    saved = tuple(torch.as_tensor(state_dict[_KNOWN_KEY]).tolist())
    if tuple(known) != saved:
        raise ValueError(
            f"The checkpoint was trained with known classes {list(saved)[:10]}... but this module has "
            f"{list(known)[:10]}...; the targets would change meaning. {fix}"
        )


class GCDRows(Dataset):
    """In-memory GCD rows: ``image`` (through ``transform``), ``target``, ``labeled``, ``true_target``, ``index``.

    ``target`` is the class where ``labeled`` and ``-1`` elsewhere with ``hide`` (training), the class
    everywhere without it (evaluation). ``targets`` holds the served targets (the fingerprint reads them).

    Args:
        images: ``(N, ...)`` the images.
        truth: ``(N,)`` every image's target (its class, in the data set's target order).
        labeled: ``(N,)`` bool, the labelled rows; ``None``: none.
        transform: applied to each image as it is served (``None``: served as stored).
        hide: serve ``-1`` as the ``target`` of unlabelled rows (training).
    """

    def __init__(
        self,
        images: torch.Tensor,
        truth: torch.Tensor,
        labeled: torch.Tensor | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        hide: bool = False,
    ) -> None:
        self.images, self.truth, self.transform = images, truth.long(), transform
        self.labeled = torch.zeros(len(truth), dtype=torch.bool) if labeled is None else labeled
        self.targets = hide_unlabeled(self.truth, self.labeled) if hide else self.truth

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = self.images[index]
        image = self.transform(image) if self.transform is not None else image
        extra = {LABELED: self.labeled[index], TRUE_TARGET: self.truth[index]}
        return indexed_sample(image, self.targets[index], index, extra)
