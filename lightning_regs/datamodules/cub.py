"""CUB-200-2011 from its own text files: the official split, bounding-box crops and a GCD mode."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2
from typing_extensions import override

from lightning_regs.batch import LABELED
from lightning_regs.datamodules.base import SplitDataModule, hparam
from lightning_regs.datamodules.cub_files import (
    FILES,
    SOURCE,
    CUBImages,
    check_boxes,
    check_class_folders,
    read_table,
)
from lightning_regs.datamodules.files import RootGuard
from lightning_regs.datamodules.gcd_split import (
    SSB_SPLIT_FILE,
    check_known_classes,
    draw_labeled_pooled,
    hide_unlabeled,
    known_classes_state,
    known_first_order,
    read_split_file,
    targets_in_order,
)
from lightning_regs.datamodules.normalization import IMAGENET_MEAN, IMAGENET_STD
from lightning_regs.datamodules.views import TwoViews

# SSB_SPLIT_FILE (gcd_split_file="ssb") and IMAGENET_MEAN/STD stay importable from here, where they were defined
__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SSB_SPLIT_FILE", "CUB200DataModule"]


class CUB200DataModule(SplitDataModule):
    """CUB-200-2011 (11,788 bird images, 200 classes) from its text files, as dict batches.

    Reads ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt`` and ``classes.txt``
    (plus ``bounding_boxes.txt`` with ``crop_to_bbox``), whose 1-based ids become 0-based targets;
    the official split (5,994 train / 5,794 test) is used as is. ``setup`` checks the tree (files,
    fields, matching ids, every image in its class's folder and present, no entry leading outside
    ``images/``, and with ``crop_to_bbox`` every box at least half inside its image) and names what is
    wrong. There is no automatic download: see ``docs/datasets/cub200.md`` (CaltechDATA record 65de6-vp158).

    **What "val" means:** without GCD, the validation loader serves the official *test* split. In
    GCD mode (``gcd=True``) it serves the *unlabeled training images* with evaluation transforms
    (the transductive protocol of SimGCD, scored with :func:`lightning_regs.functional.gcd.gcd_accuracy`),
    and ``test``/``predict`` serve the official test split.

    **GCD mode:** ``known_classes`` (0-based original ids; default the first half of the classes,
    i.e. 0..99), ``gcd_split_file="ssb"`` (the Semantic Shift Benchmark split SimGCD and LegoGCD use, shipped
    as ``datamodules/data/cub_ssb_split.json`` with its source) or a JSON ``gcd_split_file`` with
    ``known_classes`` and ``unknown_classes`` (a list,
    or lists under ``Easy``/``Medium``/``Hard`` as in the SSB splits) choose the known classes;
    ``labeled_fraction`` of the known-class training images, drawn with a local generator seeded by
    ``seed``, are labeled (``batch["labeled"]``), every other training image is unlabeled. Class ids
    are remapped (:mod:`~lightning_regs.datamodules.gcd_split`, the split all GCD data sets share) so the known
    classes come first (``0..num_known_classes-1``, in the order given),
    then the novel ones; ``class_order[t]`` is the original class of target ``t``. In the *training*
    set, ``batch["target"]`` is ``-1`` for every unlabeled image (the labels a GCD method may learn
    from); the ground truth of every image is ``batch["true_target"]``, for evaluation only. The
    validation (unlabeled training images) and test sets serve evaluation: there both are the true
    class. ``ImageClassifier`` refuses the ``-1`` targets: GCD mode is for GCD methods, not plain
    classification.

    **Resume:** the seed, ``labeled_fraction`` and, in GCD mode, the labeled indices and known classes
    are kept in :meth:`state_dict`. A resumed run adopts the checkpoint's labeled images and seed (so
    its training order), with a warning if they differ from this module's; a checkpoint made with
    another ``gcd`` setting or other known classes is refused, as the targets would change meaning.

    **num_classes** is the count in ``classes.txt`` (200 for CUB-200-2011), known once ``setup`` has
    read it; before that, reading it raises
    :class:`~lightning_regs.datamodules.base.NumClassesUnknownError` unless ``num_classes`` is given
    (``setup`` then checks it against ``classes.txt``).

    Args:
        root: the folder holding ``CUB_200_2011`` (or that folder itself).
        batch_size: samples per batch on each process.
        image_size: side of the square crops the default transforms produce.
        crop_to_bbox: crop every image to its box from ``bounding_boxes.txt`` before the transforms.
        gcd: generalized category discovery mode (see above).
        known_classes: known classes for GCD, 0-based; ``None``: the first half.
        gcd_split_file: ``"ssb"`` (the SSB split) or a JSON file with ``known_classes`` and ``unknown_classes``
            (0-based).
        labeled_fraction: share of the known-class training images that are labeled in GCD mode.
        seed: seed of the labeled subset and of the training order.
        train_transform: replaces the training transforms (input: uint8 ``(3, H, W)`` tensor).
        eval_transform: replaces the evaluation transforms.
        num_workers: DataLoader workers.
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: DataLoader ``persistent_workers`` (only with ``num_workers > 0``).
        num_classes: the number of classes, when it should be known before ``setup`` (e.g. 200).
        gcd_views: GCD mode: augmented views per training image; 2 stacks them, ``image`` ``(2, 3, H, W)``
            (:class:`~lightning_regs.datamodules.views.TwoViews`), what
            :class:`~lightning_regs.tasks.GCDClassifier` trains on.

    Example::

        >>> dm = CUB200DataModule(root="/nonexistent", gcd=True, num_workers=0, num_classes=200)
        >>> dm.num_classes
        200
        >>> dm.setup("fit")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: /nonexistent/CUB_200_2011 lacks [...]. CUB-200-2011 is not downloaded automatically...
    """

    @property
    @override
    def split_arguments(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("labeled_fraction",) if self.hparams.get("gcd") else ()

    task_arguments = ("gcd",)

    image_size = hparam()
    crop_to_bbox = hparam()
    gcd = hparam()
    gcd_split_file = hparam()
    labeled_fraction = hparam()

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 64,
        image_size: int = 224,
        crop_to_bbox: bool = False,
        gcd: bool = False,
        known_classes: list[int] | None = None,
        gcd_split_file: str | None = None,
        labeled_fraction: float = 0.5,
        seed: int = 0,
        train_transform: nn.Module | None = None,
        eval_transform: nn.Module | None = None,
        num_workers: int = 4,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        num_classes: int | None = None,
        gcd_views: int = 1,
    ) -> None:
        super().__init__()
        if gcd_views < 1 or (gcd_views > 1 and not gcd):
            raise ValueError(f"gcd_views must be >= 1, and > 1 only with gcd=True (2: GCDClassifier); got {gcd_views}.")
        if not 0 < labeled_fraction <= 1:
            raise ValueError(f"labeled_fraction must lie in (0, 1], got {labeled_fraction}.")
        if known_classes is not None and gcd_split_file is not None:
            raise ValueError("Give either known_classes or gcd_split_file, not both.")
        if (known_classes is not None or gcd_split_file is not None) and not gcd:
            raise ValueError("known_classes and gcd_split_file only apply with gcd=True; set gcd=True or drop them.")
        if batch_size < 1 or image_size < 1:
            raise ValueError(f"batch_size and image_size must be positive, got {batch_size} and {image_size}.")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be positive, or None to read it from classes.txt; got {num_classes}.")
        self.save_hyperparameters(ignore=["train_transform", "eval_transform"])
        self.folder = self.root if (self.root / "images.txt").is_file() else self.root / "CUB_200_2011"
        self.train_transform = train_transform if train_transform is not None else self.default_train_transform()
        self.eval_transform = eval_transform if eval_transform is not None else self.default_eval_transform()
        self._class_folders: list[str] | None = None
        self._known_classes: tuple[int, ...] = ()
        self.class_order = torch.empty(0, dtype=torch.long)

    @property
    def known_classes(self) -> tuple[int, ...]:
        """GCD mode: the known classes (original 0-based ids, targets ``0..k-1``) resolved by ``setup``; else ``()``."""
        return self._known_classes

    @property
    def labeled_indices(self) -> torch.Tensor | None:
        """GCD mode: positions (in the training set) of the labeled images; ``None`` before ``setup``."""
        return self.split_indices.get(LABELED)

    @labeled_indices.setter
    def labeled_indices(self, indices: torch.Tensor | None) -> None:
        self.split_indices.pop(LABELED, None)
        if indices is not None:
            self.split_indices[LABELED] = indices  # the split of the rows whose batch[LABELED] is True

    def default_train_transform(self) -> nn.Module:
        """RandomResizedCrop(image_size), horizontal flip, scale to [0, 1], ImageNet normalization."""
        return v2.Compose(
            [
                v2.RandomResizedCrop(self.image_size, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD)),
            ]
        )

    def default_eval_transform(self) -> nn.Module:
        """Resize to image_size / 0.875, center crop image_size, scale to [0, 1], ImageNet normalization."""
        return v2.Compose(
            [
                v2.Resize(int(self.image_size / 0.875), antialias=True),
                v2.CenterCrop(self.image_size),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD)),
            ]
        )

    def _check_files(self) -> None:
        needed = FILES if self.crop_to_bbox else FILES[:4]
        missing = [name for name in (*needed, "images") if not (self.folder / name).exists()]
        if missing:
            raise FileNotFoundError(f"{self.folder} lacks {missing}. " + SOURCE.format(root=self.root))

    def _read_classes(self) -> list[str]:
        if self._class_folders is None:
            self._check_files()
            classes = read_table(self.folder / "classes.txt", 2, (str,))
            if sorted(classes) != list(range(1, len(classes) + 1)):
                raise ValueError(f"{self.folder / 'classes.txt'} must number its classes 1..N without gaps.")
            self.check_num_classes(len(classes), str(self.folder / "classes.txt"))
            self._class_folders = [classes[k][0] for k in range(1, len(classes) + 1)]
        return self._class_folders

    @override
    def num_classes_found(self) -> int | None:
        """The number of classes in ``classes.txt`` (200 for CUB-200-2011), once read."""
        return None if self._class_folders is None else len(self._class_folders)

    @property
    def num_known_classes(self) -> int:
        """Known classes in GCD mode (targets ``0..num_known_classes-1``); all classes otherwise."""
        return len(self.known_classes) if self.gcd else self.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in target order, without the ``001.`` prefix of the folder names."""
        names = [folder.split(".", 1)[-1] for folder in self._read_classes()]
        order = self.class_order.tolist() if len(self.class_order) else range(len(names))
        return tuple(names[c] for c in order)

    def _resolve_known_classes(self, num_classes: int) -> tuple[list[int], list[int]]:
        if self.gcd_split_file is not None:
            path = SSB_SPLIT_FILE if self.gcd_split_file == "ssb" else self.gcd_split_file
            return read_split_file(path, num_classes, name=str(self.gcd_split_file))
        requested = self.hparams.known_classes
        known = [int(c) for c in requested] if requested is not None else list(range(num_classes // 2))
        if not known or len(set(known)) != len(known) or min(known) < 0 or max(known) >= num_classes:
            raise ValueError(f"known_classes must be distinct 0-based ids in [0, {num_classes}), got {known}.")
        return known, [c for c in range(num_classes) if c not in set(known)]

    def _read_records(self) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        class_folders = self._read_classes()
        num_classes = len(class_folders)
        images = read_table(self.folder / "images.txt", 2, (str,))
        labels = read_table(self.folder / "image_class_labels.txt", 2, (int,))
        split = read_table(self.folder / "train_test_split.txt", 2, (int,))
        tables = {"image_class_labels.txt": labels, "train_test_split.txt": split}
        if self.crop_to_bbox:
            tables["bounding_boxes.txt"] = read_table(self.folder / "bounding_boxes.txt", 5, (float,) * 4)
        for name, table in tables.items():
            if table.keys() != images.keys():
                odd = sorted(table.keys() ^ images.keys())[:5]
                raise ValueError(f"{self.folder / name} and images.txt list different image ids (e.g. {odd}).")
        ids = sorted(images)
        bad = [i for i in ids if not 1 <= labels[i][0] <= num_classes or split[i][0] not in (0, 1)][:5]
        if bad:
            raise ValueError(
                f"Images {bad} have a class id outside 1..{num_classes} (classes.txt) or a train/test flag other "
                f"than 0/1 in {self.folder}."
            )
        guard = RootGuard(self.folder / "images")
        paths = np.array([str(guard(images[i][0], images.where(i))) for i in ids])
        check_class_folders(ids, images, labels, class_folders)
        absent = [p for p in paths if not Path(p).is_file()]
        if absent:
            raise FileNotFoundError(
                f"{len(absent)} image(s) listed in images.txt are missing, e.g. {absent[:3]}. "
                + SOURCE.format(root=self.root)
            )
        targets = torch.tensor([labels[i][0] - 1 for i in ids], dtype=torch.long)
        is_train = torch.tensor([split[i][0] == 1 for i in ids])
        boxes = None
        if self.crop_to_bbox:
            boxes = torch.tensor([tables["bounding_boxes.txt"][i] for i in ids], dtype=torch.float64)
            check_boxes(ids, images, tables["bounding_boxes.txt"], paths)
        return paths, targets, is_train, boxes

    def draw_labeled(self, train_targets: torch.Tensor) -> torch.Tensor:
        """Positions (in the training set) of the labeled images: a seeded share of the known-class ones (pooled)."""
        return draw_labeled_pooled(train_targets < len(self.known_classes), self.labeled_fraction, self.seed)

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        paths, original, is_train, boxes = self._read_records()
        num_classes = len(self._read_classes())
        if self.gcd:
            known, novel = self._resolve_known_classes(num_classes)
            self._known_classes = tuple(known)
            self.class_order = known_first_order(known, num_classes, novel)
        else:
            self.class_order = torch.arange(num_classes)
        targets = targets_in_order(original, self.class_order)
        train, test = torch.nonzero(is_train).flatten(), torch.nonzero(~is_train).flatten()

        def subset(
            rows: torch.Tensor, transform: nn.Module, labeled: torch.Tensor | None = None, hide: bool = False
        ) -> CUBImages:
            crop, truth = (boxes[rows] if boxes is not None else None), targets[rows]
            # GCD: the truth travels apart, so that an unlabeled training image's label cannot be learned
            shown = hide_unlabeled(truth, labeled) if hide else truth
            return CUBImages(paths[rows.numpy()], shown, transform, crop, labeled, None if labeled is None else truth)

        self.datasets = {"test": subset(test, self.eval_transform)}
        if self.gcd:
            test_labeled = torch.zeros(len(test), dtype=torch.bool)
            self.datasets["test"] = subset(test, self.eval_transform, test_labeled)
            if self.labeled_indices is None:
                self.labeled_indices = self.draw_labeled(targets[train])
            if len(self.labeled_indices) and int(self.labeled_indices.max()) >= len(train):
                raise ValueError("The saved labeled indices exceed the training set: the data on disk changed.")
            labeled = torch.zeros(len(train), dtype=torch.bool)
            labeled[self.labeled_indices] = True
            views = self.hparams.gcd_views
            transform = TwoViews(self.train_transform, views) if views > 1 else self.train_transform
            self.datasets["train"] = subset(train, transform, labeled, hide=True)
            self.datasets["val"] = subset(
                train[~labeled], self.eval_transform, torch.zeros(int((~labeled).sum()), dtype=torch.bool)
            )
        else:
            self.datasets["train"] = subset(train, self.train_transform)
            self.datasets["val"] = self.datasets["test"]

    @override
    def extra_state(self) -> dict[str, Any]:
        return known_classes_state(self.known_classes)

    @override
    def load_extra_state(self, state_dict: Mapping[str, Any]) -> None:
        if "labeled_indices" in state_dict and not self.gcd:  # a checkpoint from before `gcd` was saved
            raise ValueError("The checkpoint holds a GCD split but this CUB200DataModule has gcd=False; set gcd=True.")
        if "known_classes" not in state_dict:
            return
        known, _ = self._resolve_known_classes(len(self._read_classes()))
        check_known_classes(state_dict, known, "Use the same known_classes/gcd_split_file.")
