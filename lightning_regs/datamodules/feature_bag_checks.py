"""What :class:`~lightning_regs.datamodules.FeatureBagDataModule` checks: its classes, its files, the checkpoint's data.

:class:`FeatureBagChecks` is mixed into the DataModule: the class ids of the slides (the training split's labels,
integer labels as ids, or the order ``classes`` gives), each features file's size and digest, and the state a
checkpoint keeps (classes, file sizes and digests, each slide's split), refused on restore when the data differs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from typing_extensions import override

from lightning_regs.datamodules.base import check_class_names
from lightning_regs.datamodules.slide_files import _file_record
from lightning_regs.datamodules.slide_tables import _INTEGER, SPLITS, _examples, _id_mapping, _Row

__all__ = ["FeatureBagChecks"]


class FeatureBagChecks:
    """The class ids and the checkpoint checks of :class:`~lightning_regs.datamodules.FeatureBagDataModule`."""

    def _class_ids(self, by_split: Mapping[str, Sequence[_Row]]) -> tuple[tuple[Any, ...], dict[str, int]]:
        """The classes of the training split and each slide's class id; a label the training split lacks is named."""
        rows = [row for split in SPLITS for row in by_split[split]]
        integers = all(_INTEGER.fullmatch(row.label) for row in rows)
        order = self.hparams.get("classes")
        if integers and order is not None:
            raise ValueError(
                f"classes={list(order)!r} was given, but every label in {self.csv_path} is an integer: integer labels "
                "are the class ids themselves (0, 1, ...), in their own order, and classes orders class names. Leave "
                "classes unset, or write the labels as class names."
            )
        if integers:
            negative = next((row for row in rows if int(row.label) < 0), None)
            if negative is not None:
                raise ValueError(
                    f"{self.csv_path}, line {negative.line}: slide {negative.slide_id!r} has label {negative.label}; "
                    "integer labels are class ids 0, 1, ... Fix the row."
                )
            classes: tuple[Any, ...] = tuple(range(max(int(row.label) for row in by_split["train"]) + 1))
            ids = {row.slide_id: int(row.label) for row in rows}
        else:
            check_class_names(sorted({row.label for row in rows}), f"the labels of {self.csv_path}")
            classes = tuple(order) if order is not None else tuple(sorted({row.label for row in by_split["train"]}))
            position = {name: index for index, name in enumerate(classes)}
            ids = {row.slide_id: position.get(row.label, -1) for row in rows}
            if order is not None:
                self._check_labels_in_classes(rows, position)
        present = sorted({ids[row.slide_id] for row in by_split["train"]})
        if len(present) < 2:
            labels_from, fix = (
                ("", "split column 'train'")
                if self.splits_path is None
                else (f", labels from {self.csv_path}", "its train column, or pass another fold's splits file")
            )
            raise ValueError(
                f"{self._split_source}: the training split holds only class {by_split['train'][0].label!r} "
                f"({len(by_split['train'])} slides{labels_from}); a classifier cannot learn from one class. Move "
                f"slides of the other classes to the training split ({fix})."
            )
        untrained = [classes[index] for index in sorted(set(range(len(classes))) - set(present))]
        if integers and untrained:
            raise ValueError(
                f"{self._split_source}: integer labels are class ids 0..{len(classes) - 1}, but no training slide has "
                f"class {untrained} (training labels: {present}). Every class id below the largest must occur in "
                "training: renumber the labels without gaps, or move slides of those classes to the training split."
            )
        if order is not None and untrained:
            raise ValueError(
                f"classes={list(order)!r} lists {untrained}, which no training slide of {self._split_source} has (its "
                f"labels: {sorted({row.label for row in by_split['train']})}). The classes are the training split's "
                "labels, and classes only chooses their order: remove them from classes, or move slides of those "
                "classes to the training split."
            )
        for split in SPLITS[1:]:
            for row in by_split[split]:
                if not 0 <= ids[row.slide_id] < len(classes):
                    raise ValueError(
                        f"{self.csv_path}, line {row.line}: {split} slide {row.slide_id!r} has label {row.label!r}, "
                        f"which no training slide has (the classes come from the training split: {list(classes)}). "
                        "Move a slide of that class to the training split, or fix the label."
                    )
        return classes, ids

    def _check_labels_in_classes(self, rows: Sequence[_Row], position: Mapping[str, int]) -> None:
        """Refuse a label the ``classes`` argument does not list, naming the first slide's CSV line."""
        unknown = [row for row in rows if row.label not in position]
        if not unknown:
            return
        first, labels = unknown[0], sorted({row.label for row in unknown})
        slides = "1 slide" if len(unknown) == 1 else f"{len(unknown)} slides"
        raise ValueError(
            f"{self.csv_path}, line {first.line}: {first.split} slide {first.slide_id!r} has label {first.label!r}, "
            f"which is not in classes={list(position)!r} (labels not in it: {labels}, on {slides}). Fix the label, or "
            "add the class to classes."
        )

    def _record_files(self, rows: Sequence[_Row], paths: Mapping[str, Path]) -> None:
        """Each file's size and (``check_files="digest"``) content digest; under DDP rank 0 reads, the others get it."""
        digest = self.hparams.check_files == "digest"
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            records = trainer.strategy.broadcast(
                self._read_records(rows, paths, digest) if trainer.is_global_zero else None
            )
        else:
            records = self._read_records(rows, paths, digest)
        self._sizes = {slide_id: size for slide_id, (size, _) in records.items()}
        self._digests = {slide_id: value for slide_id, (_, value) in records.items() if value}

    def _read_records(
        self, rows: Sequence[_Row], paths: Mapping[str, Path], digest: bool
    ) -> dict[str, tuple[int, str]]:
        def record(path: Path) -> tuple[int, str]:
            stat = path.stat()
            key = (os.fspath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, digest)
            if key not in self._record_cache:  # a second setup (e.g. after a restore) does not read the files again
                self._record_cache[key] = _file_record(path, digest)
            return self._record_cache[key]

        slide_ids = [row.slide_id for row in rows]
        with ThreadPoolExecutor(max_workers=min(self.hparams.check_workers, len(slide_ids))) as pool:
            return dict(zip(slide_ids, pool.map(record, [paths[s] for s in slide_ids]), strict=True))

    # state ---------------------------------------------------------------------------------------------------

    @override
    def extra_state(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "file_sizes": dict(self._sizes),
            "file_digests": dict(self._digests),
            "slide_splits": dict(self._slide_splits),  # each used slide's split: another fold is refused on resume
            "splits": self.hparams.get("splits"),  # where the split came from, for that error
        }

    @override
    def load_extra_state(self, state_dict: Mapping[str, Any]) -> None:
        self._expected = {
            key: state_dict[key]
            for key in ("classes", "file_sizes", "file_digests", "slide_splits", "splits")
            if key in state_dict
        }
        if self.datasets:  # set up already: refuse now, before anything changes
            self._check_expected()

    def _check_expected(self) -> None:
        """Refuse data whose classes or features files differ from the checkpoint's (:meth:`load_extra_state`)."""
        expected = self._expected or {}
        name, where = type(self).__name__, f"the data under {self.root}"
        self._check_splits(expected)  # first: another fold's split also changes the classes it finds
        classes = expected.get("classes")
        if classes and self.classes and tuple(classes) != tuple(self.classes):
            if sorted(map(str, classes)) == sorted(map(str, self.classes)):
                then, now = _id_mapping(classes), _id_mapping(self.classes)
                flag = "[" + ",".join(map(str, classes)) + "]"
                raise ValueError(
                    f"{name}: the checkpoint was made with the same classes in another order: class ids {then} then, "
                    f"{now} now (classes={self.hparams.get('classes')!r}), so every class id, and each output of the "
                    f"model, would mean the other class. Pass classes={list(classes)!r} (--data.init_args.classes="
                    f"{flag}) to resume from this checkpoint, or start a new run."
                )
            raise ValueError(
                f"{name}: {where} is not the data the checkpoint was made on: the checkpoint's classes are "
                f"{list(classes)}, the training split's now {list(self.classes)}, so class ids would mean other "
                "classes. Resume with the original CSV, or start a new run."
            )
        sizes, digests = expected.get("file_sizes") or {}, expected.get("file_digests") or {}
        changed = [
            slide_id
            for slide_id, size in sizes.items()
            if slide_id in self._sizes
            and (
                size != self._sizes[slide_id]
                or (slide_id in digests and slide_id in self._digests and digests[slide_id] != self._digests[slide_id])
            )
        ]
        if changed:
            files_of = f"file of {len(changed)} slide" if len(changed) == 1 else f"files of {len(changed)} slides"
            examples = _examples([repr(slide_id) for slide_id in changed], len(changed))
            raise ValueError(
                f"{name}: {where} is not the data the checkpoint was made on: the features {files_of} changed since "
                f"(e.g. {examples}). Every per-sample state would point at other features. Resume with the original "
                "features, or start a new run."
            )

    def _check_splits(self, expected: Mapping[str, Any]) -> None:
        """Refuse a split other than the checkpoint's: a slide in another split, or in or out of the splits."""
        then = expected.get("slide_splits")
        if then is None or not self._slide_splits:  # a checkpoint from before splits were saved, or not set up
            return
        now = self._slide_splits
        moved = [
            f"{slide_id!r} ({then.get(slide_id, 'in no split')} then, {now.get(slide_id, 'in no split')} now)"
            for slide_id in dict.fromkeys([*then, *now])
            if then.get(slide_id) != now.get(slide_id)
        ]
        if not moved:
            return

        def source(splits: Any) -> str:
            return f"splits={os.fspath(splits)!r}" if splits is not None else "the CSV's split column"

        slides = "1 slide is" if len(moved) == 1 else f"{len(moved)} slides are"
        raise ValueError(
            f"{type(self).__name__}: the data under {self.root} is not split as when the checkpoint was made: "
            f"{slides} in another split (e.g. {_examples(moved, len(moved))}). The checkpoint's split came from "
            f"{source(expected.get('splits'))}, this module's from {source(self.hparams.get('splits'))}. The run would "
            "mix two folds (trained on slides it then validates or tests on). Resume with the checkpoint's splits "
            "(the same fold's file), or start a new run."
        )
