"""Whole-slide images as bags of pre-extracted patch features (CLAM's layout): one features file per slide, one CSV.

Multiple-instance learning on whole-slide images (CLAM, TransMIL, the AEM attention regularizer) trains on features
extracted once per patch: a slide becomes a bag of ``N`` feature vectors of width ``D`` (``N`` in the thousands,
varying from slide to slide) with one label. :class:`FeatureBagDataModule` reads that layout, checks it at ``setup``
and yields bag samples (``lightning_regs.datamodules.bags``) batched by
:func:`~lightning_regs.datamodules.bags.collate_bags`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_regs.datamodules.bags import collate_bags
from lightning_regs.datamodules.base import SplitDataModule
from lightning_regs.datamodules.feature_bag_checks import FeatureBagChecks
from lightning_regs.datamodules.files import RootGuard
from lightning_regs.datamodules.slide_files import SUFFIXES, _import_h5py, _SlideBags, load_features
from lightning_regs.datamodules.slide_tables import (
    _LAYOUT,
    SPLITS,
    _check_classes_argument,
    _examples,
    _id_mapping,
    _read_slides,
    _read_splits,
    _Row,
)

__all__ = ["FeatureBagDataModule"]

_CLAM_FEATURES_DIRS = ("pt_files", "h5_files")  # the folders CLAM's extract_features_fp.py writes


class FeatureBagDataModule(FeatureBagChecks, SplitDataModule):
    """Slides as bags of pre-extracted patch features, from a CSV of slides and one features file per slide.

    The layout of CLAM's feature extraction (``extract_features_fp.py``)::

        <root>/slides.csv                  slide_id,label,split  (split: train, val or test; more columns ignored)
        <root>/features/<slide_id>.pt      torch.save of a float tensor (N, D), or of {"features": (N, D),
                                           "coords": (N, 2)} (CLAM's pt_files hold the tensor)
        <root>/features/<slide_id>.h5      or CLAM's h5 file with a "features" dataset (needs ``pip install h5py``)
        <splits>                           optional: CLAM's splits/<task>/splits_<k>.csv, the split of fold k

    (CLAM writes ``pt_files/`` and ``h5_files/``: pass ``features_dir="pt_files"``; each slide's file is looked up as
    ``<slide_id>.pt``, then ``<slide_id>.h5``.) Each split keeps the CSV's order, and ``datasets[split].slide_ids[i]``
    is the slide of sample ``i``.

    **Classes.** Labels are class ids (``0``, ``1``, ...) or class names. The classes are the training split's
    labels: :attr:`classes` lists them by id and ``num_classes`` is their count (or given, and then checked against
    it). Class names get their ids in the order of the ``classes`` argument (``classes=["normal", "cancer"]``, or
    ``--data.init_args.classes=[normal,cancer]``), else in sorted order, which ``setup`` logs once. The order matters:
    :class:`~lightning_regs.tasks.MILClassifier` treats class 0 as the negative bag class (``instance_auroc``), its
    two-class ``auroc`` scores class 1's probability, and column ``k`` of what ``predict`` returns is P(class ``k``);
    sorted, ``cancer``/``normal`` would make ``cancer`` the negative class. ``classes`` only orders the training split's
    labels: a label it does not list (in any split) is an error naming the CSV line, and so is a class it lists that
    no training slide has (as without it, every class is learnt from). Integer labels are the ids themselves, in
    their own order: ``classes`` is refused with them.

    **Published splits.** With ``splits`` (e.g. ``splits="splits/task_1_tumor_vs_normal_100/splits_3.csv"``, or
    ``--data.init_args.splits=...`` on the command line) the splits file decides which slide is in train, val and
    test, and the CSV only gives the labels: its ``split`` column may be left out, and where present it is not read
    at all (``splits`` wins, silently: a CSV made for the single-split setup serves every fold unchanged). The file is
    CLAM's ``splits_<k>.csv`` as ``create_splits_seq.py`` writes it with pandas: the header ``,train,val,test`` (an
    unnamed index column, then one column per split), each column listing its split's slide ids, the shorter columns
    padded with empty cells. CLAM's ``splits_<k>_bool.csv`` (one row per slide, True/False columns) is not read; it
    is refused, naming the ``splits_<k>.csv`` beside it. Slides of the CSV that no split lists are left out quietly
    (their features files need not exist), as CLAM leaves them out; the order within a split is still the CSV's.

    A sample is a bag: ``image`` the slide's features ``(N, D)`` float32, ``target`` its class id (int64) and
    ``index`` its position in its split. Batches go through :func:`~lightning_regs.datamodules.bags.collate_bags`:
    ``image`` ``(B, N_max, D)`` zero-padded and ``instance_mask`` ``(B, N_max)``. The default ``batch_size=1`` is
    the papers' setting (AEM, CLAM); larger batches need a model that reads ``instance_mask``. A file is read when
    its sample is asked for, with ``torch.load(weights_only=True)`` (no arbitrary object is ever unpickled).

    **Checks.** ``setup`` refuses, naming the CSV line or slide and the fix: a missing ``root`` (its absolute path
    and ``--data.init_args.root``), a missing CSV or column (a missing ``split`` column points to ``splits``), a
    missing ``features_dir`` folder (suggesting CLAM's ``pt_files``/``h5_files`` where one lies beside it), a
    malformed row, an unknown split, a slide listed twice, a slide id that leads outside ``root`` or ``features_dir``
    (``..``, an absolute path, a symlink pointing out; see :mod:`~lightning_regs.datamodules.files`), slides without a
    features file (their count and the first few ids), ``.h5`` files without h5py, an empty split, a training split
    of one class, a validation or test label the training split lacks, and (with ``classes``) a label ``classes``
    does not list or a class of it no training slide has. With ``splits`` it also refuses, naming
    the file, the line and the slide: a missing file, a file without the ``train``, ``val`` and ``test`` columns (or
    a ``_bool`` file), a malformed row, a slide listed twice (in two splits or in one), and slides the CSV does not
    list (their labels come from the CSV). Each file is checked when it is read: a
    float ``(N, D)`` tensor with ``N >= 1``, the width ``D`` of the first training slide (:attr:`feature_dim`, read at
    ``setup``) and finite values, else an error naming the file.

    **Resume.** Besides each split's fingerprint (size, labels, file names), the state holds the class list (by id,
    so ``classes`` in another order is refused too) and
    every features file's size and, with ``check_files="digest"`` (the default), a SHA-256 digest of its bytes,
    computed once at ``setup`` (it reads every file once; under DDP rank 0 reads and broadcasts). A checkpoint made
    on other data (re-extracted features, relabelled slides, other classes) is a named error on resume;
    ``check_files="size"`` compares sizes only (fast, but features re-extracted with the same shapes pass). The state
    also holds each slide's split, so resuming with another split (fold 1's ``splits`` file for a checkpoint of fold
    0, or an edited split column) is a named error too; the same split read from a moved or renamed file is accepted.

    Args:
        root: the data folder (holding ``features_dir`` and, by default, the CSV).
        csv: the slides CSV, relative to ``root`` or absolute.
        features_dir: the folder of the features files, relative to ``root``.
        batch_size: training bags per batch on each process.
        eval_batch_size: validation/test/predict batch size (default ``batch_size``).
        seed: seed of the training order.
        check_files: ``"digest"`` (size and content digest of every file) or ``"size"``.
        check_workers: threads hashing the files at ``setup``.
        num_workers: DataLoader workers.
        pin_memory: DataLoader ``pin_memory``; ``persistent_workers`` likewise (only with ``num_workers > 0``).
        num_classes: the number of classes, when it should be known before ``setup``.
        splits: CLAM's ``splits_<k>.csv`` (the ``,train,val,test`` format, not ``splits_<k>_bool.csv``), relative
            to ``root`` or absolute, to take the splits from instead of the CSV's ``split`` column (see above);
            ``None`` reads the ``split`` column.
        classes: the class names in the order of their ids (class 0 first: the negative class of
            :class:`~lightning_regs.tasks.MILClassifier`), e.g. ``["normal", "cancer"]``; exactly the training
            split's labels, so ``num_classes`` is known before ``setup``. ``None``: sorted order (logged at
            ``setup``). Not allowed with integer labels.

    Example::

        >>> import csv, tempfile, torch
        >>> from pathlib import Path
        >>> tmp = tempfile.TemporaryDirectory()
        >>> root = Path(tmp.name)
        >>> (root / "features").mkdir()
        >>> slides = [("s0", "tumor", "train", 5), ("s1", "normal", "train", 3), ("s2", "tumor", "val", 4),
        ...           ("s3", "normal", "test", 2)]
        >>> for slide_id, _, _, patches in slides:
        ...     torch.save(torch.randn(patches, 8), root / "features" / f"{slide_id}.pt")
        >>> with open(root / "slides.csv", "w", newline="") as handle:
        ...     csv.writer(handle).writerows([("slide_id", "label", "split"), *(row[:3] for row in slides)])
        >>> dm = FeatureBagDataModule(root, batch_size=2)
        >>> dm.setup("fit")
        >>> dm.classes, dm.num_classes, dm.feature_dim
        (('normal', 'tumor'), 2, 8)
        >>> batch = next(iter(dm.val_dataloader()))
        >>> batch["image"].shape, batch["target"].tolist(), batch["instance_mask"].shape
        (torch.Size([1, 4, 8]), [1], torch.Size([1, 4]))
        >>> tmp.cleanup()
    """

    @staticmethod
    @override
    def collate_fn(bags: list[dict[str, Any]]) -> dict[str, Any]:
        """:func:`~lightning_regs.datamodules.bags.collate_bags`: slides differ in patch count, so padded."""
        return collate_bags(bags)

    def __init__(
        self,
        root: str | Path,
        csv: str | Path = "slides.csv",
        features_dir: str = "features",
        batch_size: int = 1,
        eval_batch_size: int | None = None,
        seed: int = 0,
        check_files: Literal["digest", "size"] = "digest",
        check_workers: int = 4,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        num_classes: int | None = None,
        splits: str | Path | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if check_files not in ("digest", "size"):
            raise ValueError(f"check_files must be 'digest' or 'size', got {check_files!r}.")
        if check_workers < 1:
            raise ValueError(f"check_workers must be at least 1, got {check_workers}.")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"batch_size and eval_batch_size must be at least 1; got {batch_size}, {eval_batch_size}.")
        if num_classes is not None and num_classes < 2:
            raise ValueError(
                f"num_classes must be at least 2, or None to count the classes in setup; got {num_classes}."
            )
        if classes is not None:
            classes = _check_classes_argument(classes, num_classes)
        self.save_hyperparameters()
        if classes is not None:
            self.hparams["classes"] = classes  # a list of str, as the CLI gives it: loads with weights_only
        #: The class of each id: class names in the order of ``classes`` (sorted without it), or the ids themselves
        #: for integer labels.
        self.classes: tuple[str, ...] | tuple[int, ...] = ()
        self._logged_classes: tuple[Any, ...] = ()
        #: The features' width ``D``, read from the first training slide at ``setup``.
        self.feature_dim: int | None = None
        self._sizes: dict[str, int] = {}
        self._digests: dict[str, str] = {}
        self._record_cache: dict[tuple[Any, ...], tuple[int, str]] = {}
        self._slide_splits: dict[str, str] = {}
        self._expected: dict[str, Any] | None = None

    @property
    def csv_path(self) -> Path:
        """The slides CSV: the ``csv`` argument, relative to ``root`` unless absolute."""
        return self.root / Path(self.hparams.csv).expanduser()

    @property
    def splits_path(self) -> Path | None:
        """The splits file: the ``splits`` argument, relative to ``root`` unless absolute (``None``: none given)."""
        splits = self.hparams.get("splits")
        return None if splits is None else self.root / Path(splits).expanduser()

    @property
    def features_root(self) -> Path:
        """The folder of the features files: ``root / features_dir``."""
        return self.root / self.hparams.features_dir

    @override
    def num_classes_found(self) -> int | None:
        """The number of classes of the training split, once ``setup`` has read it (or given by ``classes``)."""
        order = self.hparams.get("classes")
        return len(self.classes) or (len(order) if order is not None else None)

    # setup ---------------------------------------------------------------------------------------------------

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if not self.root.is_dir():
            given = os.fspath(self.hparams.root)
            relative = "" if self.root.is_absolute() else f", relative to the working folder {os.getcwd()}"
            raise FileNotFoundError(
                f"{type(self).__name__} root {self.root.resolve()} "
                f"{'is not a folder' if self.root.exists() else 'does not exist'} (root={given!r}{relative}). Pass "
                "the data folder as root=path/to/slides (--data.init_args.root=path/to/slides on the command "
                f"line).\n{_LAYOUT}"
            )
        splits_path = self.splits_path
        rows = _read_slides(self.csv_path, split_column=splits_path is None)
        if splits_path is not None:
            rows = self._apply_splits(rows, splits_path)
        by_split = {split: [row for row in rows if row.split == split] for split in SPLITS}
        empty = [split for split, split_rows in by_split.items() if not split_rows]
        if empty:
            counts = ", ".join(f"{split} {len(split_rows)}" for split, split_rows in by_split.items())
            fix = (
                f"set the split column of some rows to {'/'.join(empty)}"
                if splits_path is None
                else f"list slide ids in its {'/'.join(empty)} column"
            )
            raise ValueError(
                f"{self._split_source} lists no slides for split {' and '.join(map(repr, empty))} (slides per split: "
                f"{counts}). Every split needs at least one slide: {fix}."
            )
        paths = self._find_files(rows)
        self.classes, targets = self._class_ids(by_split)
        self.check_num_classes(len(self.classes), f"the training split of {self._split_source}")
        self._record_files(rows, paths)
        self._slide_splits = {row.slide_id: row.split for row in rows}
        if self._expected is not None:
            self._check_expected()
        first = by_split["train"][0].slide_id
        reference = os.fspath(paths[first])
        self.feature_dim = int(load_features(paths[first]).shape[1])
        self.datasets = {
            split: _SlideBags(
                [row.slide_id for row in split_rows],
                [paths[row.slide_id] for row in split_rows],
                [targets[row.slide_id] for row in split_rows],
                self.feature_dim,
                reference,
            )
            for split, split_rows in by_split.items()
        }
        self._log_classes()

    def _log_classes(self) -> None:
        """Log the sorted mapping of class names to ids once (not when ``classes`` chose it, nor for integer ids)."""
        if self.hparams.get("classes") is not None or not self.classes or isinstance(self.classes[0], int):
            return
        if self._logged_classes == self.classes:  # set up again (e.g. on resume): said already
            return
        self._logged_classes = self.classes
        rank_zero_info(
            f"{type(self).__name__}: classes {_id_mapping(self.classes)} (sorted; pass classes=[...] to choose the "
            "order, --data.init_args.classes=[...] on the command line; MILClassifier treats class 0 as the negative "
            "class)"
        )

    @property
    def _split_source(self) -> Path:
        """The file the splits come from: the splits file, else the CSV."""
        return self.splits_path or self.csv_path

    def _apply_splits(self, rows: Sequence[_Row], splits_path: Path) -> list[_Row]:
        """The CSV rows the splits file lists, in the CSV's order, each with its split from the file."""
        listed = _read_splits(splits_path)
        split_of = {slide_id: split for split in SPLITS for slide_id in listed[split]}
        in_csv = {row.slide_id for row in rows}
        unknown = [
            f"{slide_id!r} (line {listed[split][slide_id]}, {split})"
            for slide_id, split in split_of.items()
            if slide_id not in in_csv
        ]
        if unknown:
            raise ValueError(
                f"{len(unknown)} of the {len(split_of)} slides listed in {splits_path} are not in the slides CSV "
                f"{self.csv_path}, which gives every slide's label: {_examples(unknown, len(unknown))}. Add their rows "
                "(slide_id,label) to the CSV, or pass the splits file made for this CSV (the same task)."
            )
        return [row._replace(split=split_of[row.slide_id]) for row in rows if row.slide_id in split_of]

    def _find_files(self, rows: Sequence[_Row]) -> dict[str, Path]:
        """Each slide's features file (``.pt``, else ``.h5``), resolved inside ``root`` and ``features_dir``."""
        features_dir = self.hparams.features_dir
        if not self.features_root.is_dir():
            state = "is not a folder" if self.features_root.exists() else "does not exist"
            raise FileNotFoundError(
                f"The features folder {self.features_root} {state} (root / features_dir={features_dir!r}), so none "
                f"of the {len(rows)} slides listed in {self._split_source} has a features file. "
                + (
                    self._features_dir_hint()
                    or "Pass the folder of the features files, relative to root, as features_dir=... "
                    "(--data.init_args.features_dir=... on the command line)."
                )
                + "\n"
                + _LAYOUT
            )
        in_root, in_features = RootGuard(self.root), RootGuard(self.features_root)
        found: dict[str, Path] = {}
        missing: list[_Row] = []
        for row in rows:
            where = f"{self.csv_path}, line {row.line} (slide {row.slide_id!r})"
            for suffix in SUFFIXES:
                in_root(os.path.join(features_dir, row.slide_id + suffix), where)
                path = in_features(row.slide_id + suffix, where)
                if path.is_file():
                    found[row.slide_id] = path
                    break
            else:
                missing.append(row)
        if missing:
            named = [f"{row.slide_id!r} (line {row.line})" for row in missing]
            hint = f" {self._features_dir_hint()}" if len(missing) == len(rows) else ""
            listed_in, remove = (
                (f"{self.csv_path}", "remove their rows from the CSV")
                if self.splits_path is None
                else (f"{self.splits_path} (lines of {self.csv_path.name})", "remove them from the splits file")
            )
            raise FileNotFoundError(
                f"{len(missing)} of the {len(rows)} slides listed in {listed_in} have no features file in "
                f"{self.features_root} (looked for <slide_id>.pt, then <slide_id>.h5): "
                f"{_examples(named, len(named))}. "
                f"Extract their features, fix features_dir, or {remove}.{hint}\n" + _LAYOUT
            )
        h5_files = [path for path in found.values() if path.suffix == ".h5"]
        if h5_files:
            _import_h5py(h5_files[0])
        return found

    def _features_dir_hint(self) -> str:
        """Which of CLAM's ``pt_files/`` and ``h5_files/`` lies beside ``features_dir`` to pass instead (or ``""``)."""
        features_dir = Path(self.hparams.features_dir)
        if features_dir.is_absolute():
            return ""
        bases = dict.fromkeys([features_dir.parent, Path(".")])  # beside features_dir, and in root
        found = [
            (base / name).as_posix()
            for name in _CLAM_FEATURES_DIRS
            for base in bases
            if (base / name) != features_dir and (self.root / base / name).is_dir()
        ]
        if not found:
            return ""
        options = " or ".join(f'features_dir="{name}" (--data.init_args.features_dir={name})' for name in found)
        folders = " and ".join(f"{name}/" for name in found)
        h5py = " (.h5 files need h5py)" if any(name.endswith("h5_files") for name in found) else ""
        return f"{self.root} holds {folders}, as CLAM's extract_features_fp.py writes them: pass {options}{h5py}."
