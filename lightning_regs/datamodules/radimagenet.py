"""RadImageNet (Mei et al., Radiology: AI 2022) as a LightningDataModule: CT, MR and US images in 165 classes."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchvision.transforms import v2
from typing_extensions import override

from lightning_regs.datamodules.base import SplitDataModule, check_class_names
from lightning_regs.datamodules.files import RootGuard
from lightning_regs.datamodules.image_report import REPORT_KINDS, format_report, image_report
from lightning_regs.datamodules.normalization import IMAGENET_MEAN, IMAGENET_STD
from lightning_regs.datamodules.radimagenet_files import (
    IMAGE_SUFFIXES,
    LAYOUT,
    LISTED_TWICE,
    MODALITIES,
    SPLITS,
    RadImages,
    keep_rows,
    levels,
    read_class_index,
    read_csv,
)

# SPLITS, MODALITIES and IMAGE_SUFFIXES stay importable from here, where they were defined
__all__ = ["IMAGE_SUFFIXES", "MODALITIES", "SPLITS", "RadImageNetDataModule"]


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place; on failure leave nothing."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class RadImageNetDataModule(SplitDataModule):
    """RadImageNet from its split CSVs (``mode="csv"``) or its folder tree (``mode="folder"``).

    CSV mode reads ``RadiologyAI_{train,val,test}.csv`` (``filename,label``; filenames relative to
    ``root``) and uses the official splits. Folder mode walks ``radiology_ai/<CT|MR>/<anatomy>/<label>``
    and ``radiology_ai/US/<label>`` (class names ``CT/abd/normal``, ``US/ovary``) and draws a seeded
    split kept in :meth:`state_dict`. ``label_level`` picks the classes: ``label`` (165 in the real
    data; the CSV's label column in CSV mode), ``anatomy`` (``CT/abd``; all ultrasound is ``US``) or
    ``modality`` (``CT``, ``MR``, ``US``). The class-to-index mapping is the sorted training class
    names; it is saved in :meth:`state_dict` (and restored from it), optionally read from or written to
    ``class_index_path`` (JSON), and otherwise written as ``radimagenet_classes.json`` in the Trainer's
    log directory. With a Trainer, the image report (below) is written as
    ``radimagenet_image_report.json`` in its log directory in both cases. Both files are written
    atomically by global rank 0 (a failed write leaves no partial file).

    Every filename must lead inside ``root`` once symlinks are resolved (``..``, absolute paths and
    symlinks pointing out are refused, naming the CSV, line and entry; the folder walk likewise).
    ``setup`` checks every image before a worker sees it and stores :attr:`report` (``missing``,
    ``unreadable``, ``blank`` = constant, ``duplicates`` = same sha256, groups of filenames,
    ``listed_twice`` = one path in several rows, e.g. in train and test). ``bad_images="warn"`` drops
    missing and unreadable files and warns; ``"drop"`` also drops blank images, every copy of a
    duplicate after the first and every listing of a path after its first (train, then val, then
    test); ``"raise"`` raises on any finding. ``check_images="exists"`` only checks that files exist (fast, for 1.35M
    files); the full check reads every file once. There is no download: the data comes by request.

    **Resume:** a resumed run adopts the checkpoint's class index, ``mode``, split and seed (with a
    warning if they differ from this module's); a checkpoint made at another ``label_level`` is refused.

    **num_classes** is the length of the class index, known once ``setup`` (or a checkpoint) has set
    it; before that, reading it raises :class:`~lightning_regs.datamodules.base.NumClassesUnknownError`
    unless ``num_classes`` is given (e.g. 165 for ``label_level="label"`` on the full data), which
    ``setup`` then checks against the class index.

    Args:
        root: the data folder (holding the CSVs and ``radiology_ai/``).
        mode: ``"csv"`` or ``"folder"``.
        label_level: ``"label"``, ``"anatomy"`` or ``"modality"``.
        image_size: side images are resized (eval) or crop-resized (train) to; ``None`` keeps their size.
        batch_size: training samples per batch on each process.
        eval_batch_size: validation/test/predict batch size (default ``batch_size``).
        val_fraction: folder mode: share of the files held out for validation (``test_fraction``: for testing).
        seed: seed of the folder-mode split and of the training order.
        check_images: ``"full"`` (decode and hash every file) or ``"exists"``.
        bad_images: ``"warn"``, ``"drop"`` or ``"raise"`` (see above).
        class_index_path: JSON class list to reuse when it exists, else to write.
        augment: training augmentation (random resized crop, scale 0.5-1, and horizontal flip).
        channels: 3 (RGB, for ImageNet backbones) or 1.
        mean: normalization mean per channel; ``std``: standard deviation per channel.
        check_workers: threads used by the image check.
        num_workers: DataLoader workers.
        pin_memory: DataLoader ``pin_memory``; ``persistent_workers`` likewise (only with ``num_workers > 0``).
        num_classes: the number of classes, when it should be known before ``setup``.

    Example::

        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> from tests.helpers.fake_datasets_medical import make_radimagenet
        >>> root = make_radimagenet(tmp.name)["root"]
        >>> dm = RadImageNetDataModule(root, image_size=16, batch_size=4)
        >>> dm.setup("fit")
        >>> dm.num_classes, dm.class_names[:2], next(iter(dm.train_dataloader()))["image"].shape
        (4, ('CT/abd/cyst', 'CT/abd/normal'), torch.Size([4, 3, 16, 16]))
        >>> tmp.cleanup()
    """

    @property
    @override
    def split_arguments(self) -> tuple[str, ...]:  # type: ignore[override]
        # The fractions draw the split in folder mode only; the CSVs fix it otherwise.
        return ("mode", "val_fraction", "test_fraction") if self.hparams.get("mode") == "folder" else ("mode",)

    task_arguments = ("label_level",)

    def __init__(
        self,
        root: str | Path,
        mode: Literal["csv", "folder"] = "csv",
        label_level: Literal["label", "anatomy", "modality"] = "label",
        image_size: int | None = 224,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        check_images: Literal["full", "exists"] = "full",
        bad_images: Literal["warn", "drop", "raise"] = "warn",
        class_index_path: str | Path | None = None,
        augment: bool = True,
        channels: int = 3,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        check_workers: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        choices = {"mode": ("csv", "folder"), "label_level": ("label", "anatomy", "modality")}
        choices.update(check_images=("full", "exists"), bad_images=("warn", "drop", "raise"))
        given = {"mode": mode, "label_level": label_level, "check_images": check_images, "bad_images": bad_images}
        for name, value in given.items():
            if value not in choices[name]:
                raise ValueError(f"{name} must be one of {choices[name]}, got {value!r}.")
        if mode == "folder" and not (val_fraction > 0 and test_fraction > 0 and val_fraction + test_fraction < 1):
            raise ValueError(f"val_fraction={val_fraction}, test_fraction={test_fraction} must be > 0 with sum < 1.")
        if channels not in (1, 3) or len(mean) != channels or len(std) != channels:
            raise ValueError(f"channels must be 1 or 3 with as many mean/std values; got {channels}, {mean}, {std}.")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be positive, or None to count the classes in setup; got {num_classes}.")
        self.save_hyperparameters()
        self.class_names: tuple[str, ...] = ()
        self.num_files: int | None = None
        self.report: dict[str, Any] = {}

    @override
    def num_classes_found(self) -> int | None:
        """Number of classes at ``label_level``: the class index's length, once set."""
        return len(self.class_names) or None

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {name: position for position, name in enumerate(self.class_names)}

    @override
    def evaluation_transform(self) -> v2.Compose:
        return self._transform(train=False)

    def _transform(self, train: bool) -> v2.Compose:
        size = self.hparams.image_size
        steps: list[Any] = []
        if size is not None and train and self.hparams.augment:
            steps += [v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip()]
        elif size is not None:
            steps.append(v2.Resize((size, size), antialias=True))
        elif train and self.hparams.augment:
            steps.append(v2.RandomHorizontalFlip())
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.hparams.mean), list(self.hparams.std))]
        return v2.Compose(steps)

    def _read_csvs(self) -> dict[str, list[tuple[str, str]]]:
        guard = RootGuard(self.root)
        return {split: read_csv(self.root / f"RadiologyAI_{split}.csv", guard) for split in SPLITS}

    def _walk_folders(self) -> dict[str, list[tuple[str, str]]]:
        base = self.root / "radiology_ai" if (self.root / "radiology_ai").is_dir() else self.root
        if not base.is_dir():
            raise FileNotFoundError(f"{base} not found (mode='folder').\n{LAYOUT}")
        guard, source = RootGuard(self.root), f"the folder walk of {base}"
        found: list[tuple[str, str]] = []
        for modality in sorted(d for d in base.iterdir() if d.is_dir() and d.name.upper() in MODALITIES):
            is_us = modality.name.upper() == "US"  # ultrasound has no anatomy level
            groups = [modality] if is_us else sorted(d for d in modality.iterdir() if d.is_dir())
            for group in groups:
                for label in sorted(d for d in group.iterdir() if d.is_dir()):
                    name = label.relative_to(base).as_posix()
                    for path in sorted(label.iterdir()):
                        if path.suffix.lower() in IMAGE_SUFFIXES:
                            entry = path.relative_to(self.root).as_posix()
                            guard(entry, source)  # a symlinked file or folder may lead out of the root
                            found.append((entry, name))
        if not found:
            raise FileNotFoundError(f"No images under {base} in <CT|MR>/<anatomy>/<label>/ or US/<label>/.\n{LAYOUT}")
        if self.num_files is not None and self.num_files != len(found):
            raise ValueError(
                f"The checkpoint's split was drawn over {self.num_files} files but {base} now holds {len(found)}: "
                "the data changed since the checkpoint."
            )
        self.num_files = len(found)
        if not self.split_indices:
            order = torch.randperm(len(found), generator=torch.Generator().manual_seed(self.seed))
            num_val = max(round(len(found) * self.hparams.val_fraction), 1)
            num_test = max(round(len(found) * self.hparams.test_fraction), 1)
            parts = (order[num_val + num_test :], order[:num_val], order[num_val : num_val + num_test])
            self.split_indices = {split: part.sort().values for split, part in zip(SPLITS, parts, strict=True)}
        return {split: [found[i] for i in self.split_indices[split].tolist()] for split in SPLITS}

    def check(self, rows: dict[str, list[tuple[str, str]]]) -> tuple[dict[str, Any], set[str]]:
        """The image report over all rows, and the filenames to drop under ``bad_images``.

        Under ``"drop"``, a file listed more than once also loses every listing after its first
        (see :func:`keep_rows`); that is not in the returned set, which names files dropped everywhere.
        """
        filenames = [filename for split in SPLITS for filename, _ in rows[split]]
        full = self.hparams.check_images == "full"
        report = image_report(self.root, filenames, full, self.hparams.check_workers)
        drop = set(report["missing"]) | set(report["unreadable"])
        if self.hparams.bad_images == "drop":
            drop |= set(report["blank"]) | {name for group in report["duplicates"] for name in group[1:]}
        return report, drop

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if not self.root.is_dir():
            raise FileNotFoundError(f"RadImageNet root {self.root} does not exist.\n{LAYOUT}")
        rows = self._read_csvs() if self.hparams.mode == "csv" else self._walk_folders()
        level = self.hparams.label_level
        if level != "label":
            index = 0 if level == "modality" else 1
            rows = {split: [(f, levels(f)[index]) for f, _ in split_rows] for split, split_rows in rows.items()}
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:  # one rank reads the files, the others get its verdict
            self.report, drop = trainer.strategy.broadcast(self.check(rows) if trainer.is_global_zero else None)
        else:
            self.report, drop = self.check(rows)
        problems = sum(len(self.report[kind]) for kind in REPORT_KINDS)
        summary = format_report(self.report, "RadImageNet image check")
        summary += LISTED_TWICE if self.report["listed_twice"] else ""
        if problems and self.hparams.bad_images == "raise":
            raise ValueError(f"{summary}\nFix the files and CSVs, or set bad_images='drop' or 'warn'.")
        kept = keep_rows(rows, drop, first_listing_only=self.hparams.bad_images == "drop")
        if problems:
            dropped = sum(map(len, rows.values())) - sum(map(len, kept.values()))
            rank_zero_warn(f"{summary}\n{dropped} files dropped (bad_images='{self.hparams.bad_images}').")
        rows = kept
        source = "the CSVs' label column" if self.hparams.mode == "csv" else "the folder names"
        check_class_names(sorted({label for split_rows in rows.values() for _, label in split_rows}), source)
        self._set_classes(sorted({label for _, label in rows["train"]}))
        self.check_num_classes(len(self.class_names), f"the class index at label_level={level!r}")
        mapping = self.class_to_idx
        for split, split_rows in rows.items():
            unknown = [(f, label) for f, label in split_rows if label not in mapping]
            if unknown:
                raise ValueError(
                    f"{len(unknown)} {split} images have classes outside the class index, e.g. {unknown[0]}; the "
                    f"index ({len(mapping)} classes) comes from the training split, a checkpoint or class_index_path."
                )
        pil_mode = "RGB" if self.hparams.channels == 3 else "L"
        for split, split_rows in rows.items():
            items = [(self.root / f, mapping[label]) for f, label in split_rows]
            self.datasets[split] = RadImages(items, self._transform(split == "train"), pil_mode)
        self._write_files()

    def _set_classes(self, train_classes: list[str]) -> None:
        path = self.hparams.class_index_path
        if not self.class_names and path is not None and Path(path).is_file():
            self.class_names = read_class_index(Path(path), self.hparams.label_level)
        if not self.class_names:
            self.class_names = tuple(train_classes)
            return
        unknown = sorted(set(train_classes) - set(self.class_names))
        if unknown:
            raise ValueError(
                f"Training classes {unknown[:5]} are not in the saved class index ({len(self.class_names)} classes); "
                "the data or label_level changed. Delete class_index_path or start from a matching checkpoint."
            )

    def save_class_index(self, path: str | Path) -> Path:
        """Write ``{"label_level", "class_names", "class_to_idx"}`` as JSON (atomically) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        content: dict[str, Any] = {"label_level": self.hparams.label_level, "class_names": self.class_names}
        content["class_to_idx"] = self.class_to_idx
        _write_atomically(path, json.dumps(content, indent=1))
        return path

    def _write_files(self) -> None:
        trainer = self.trainer
        log_dir = trainer.log_dir if trainer is not None else None  # a collective: every rank calls it
        if trainer is not None and not trainer.is_global_zero:
            return
        path = self.hparams.class_index_path
        if path is not None and not Path(path).is_file():
            self.save_class_index(path)
        elif path is None and log_dir is not None:
            self.save_class_index(Path(log_dir) / "radimagenet_classes.json")
        if log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            _write_atomically(Path(log_dir) / "radimagenet_image_report.json", json.dumps(self.report, indent=1))

    @override
    def extra_state(self) -> dict[str, Any]:
        return {"class_names": list(self.class_names), "num_files": self.num_files}

    @override
    def load_extra_state(self, state_dict: Mapping[str, Any]) -> None:
        self.class_names = tuple(state_dict.get("class_names", ()))
        self.num_files = state_dict.get("num_files")
