"""The slides CSV (``slide_id,label,split``) and CLAM's ``splits_<k>.csv`` folds: read, every bad row named.

Example::

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "slides.csv"
    >>> _ = path.write_text("slide_id,label,split\\nslide_1,tumor,train\\n")
    >>> [(row.slide_id, row.label, row.split) for row in _read_slides(path)]
    [('slide_1', 'tumor', 'train')]
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["SPLITS"]

SPLITS = ("train", "val", "test")
# The CSV's required columns, as its header spells them (other columns, e.g. CLAM's case_id, are ignored).
_HEADER = "slide_id,label,split"
_COLUMNS: tuple[str, str, str] = ("slide_id", "label", "split")
_SHOWN = 5  # ids named in an error before "..."
_INTEGER = re.compile(r"[+-]?\d+")
_LAYOUT = (
    "Expected the CLAM-style features layout:\n"
    "  <root>/slides.csv  (columns slide_id,label,split; split is train, val or test; labels are class ids or "
    "class names, given ids in the order of classes=[...], else sorted; other columns are ignored)\n"
    "  <root>/<features_dir>/<slide_id>.pt  (torch.save of a float tensor (N, D), or of a dict with 'features' "
    "(N, D) and optionally 'coords' (N, 2))\n"
    "  or <root>/<features_dir>/<slide_id>.h5  (CLAM's h5_files: a 'features' dataset (N, D); needs h5py)\n"
    "  with splits=<file>: CLAM's splits/<task>/splits_<k>.csv gives train/val/test, and the CSV needs only "
    "slide_id,label"
)
_SPLITS_FORMAT = (
    "A splits file is CLAM's splits/<task>/splits_<k>.csv (create_splits_seq.py): the header ',train,val,test' (an "
    "unnamed index column, then one column per split), each column listing its split's slide ids, the shorter "
    "columns padded with empty cells (as pandas' DataFrame.to_csv writes them)."
)
_BOOLEANS = ("True", "False")
_BOOL_FILE = re.compile(r"(splits_\d+)_bool\.csv")


class _Row(NamedTuple):
    slide_id: str
    label: str
    split: str
    line: int


def _read_slides(path: Path, split_column: bool = True) -> list[_Row]:
    """The rows of the slides CSV; a missing column, malformed row, unknown split or repeated slide id is named.

    Without ``split_column`` (a splits file gives the splits) the ``split`` column is optional and not read: each
    row's ``split`` is ``""``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"The slides CSV {path} does not exist (argument csv).\n{_LAYOUT}")
    rows: list[_Row] = []
    first_line: dict[str, int] = {}
    required = _COLUMNS if split_column else _COLUMNS[:2]
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in required if name not in header]
        if missing:
            expected = _HEADER if split_column else ",".join(required) + " (splits gives the splits: no split column)"
            clam = (
                " A CSV without a split column (CLAM's dataset_csv: case_id,slide_id,label) needs the splits from "
                "elsewhere: CLAM's published folds can be given with splits=path/to/splits_<k>.csv "
                "(--data.init_args.splits=path/to/splits_<k>.csv; relative to root, or absolute), and then the CSV "
                "needs only slide_id,label."
                if "split" in missing
                else ""
            )
            raise ValueError(f"{path} has columns {header}, without {missing}; expected {expected}.{clam}\n{_LAYOUT}")
        columns = [header.index(name) for name in required]
        for fields in reader:
            if not fields or not any(field.strip() for field in fields):
                continue  # a blank line
            where = f"{path}, line {reader.line_num}"
            if len(fields) != len(header):
                raise ValueError(
                    f"{where}: has {len(fields)} fields under a header of {len(header)}; expected {_HEADER}, got "
                    f"{fields!r}. Fix or remove the row."
                )
            values = [fields[column].strip() for column in columns]
            for name, value in zip(required, values, strict=True):
                if not value:
                    raise ValueError(f"{where}: has an empty {name}; got {fields!r}. Fix or remove the row.")
            slide_id, label, split = (*values, "")[:3]
            if split_column and split not in SPLITS:
                raise ValueError(
                    f"{where}: slide {slide_id!r} has split {split!r}, which is not one of {', '.join(SPLITS)}. "
                    "Fix the row."
                )
            if slide_id in first_line:
                raise ValueError(
                    f"{where}: slide {slide_id!r} is listed again (first at line {first_line[slide_id]}). Each slide "
                    "is listed once, in one split (a slide in two splits leaks its label); remove the repeated row."
                )
            first_line[slide_id] = reader.line_num
            rows.append(_Row(slide_id, label, split, reader.line_num))
    return rows


def _read_splits(path: Path) -> dict[str, dict[str, int]]:
    """Each split's slide ids (and the line listing each) from a CLAM ``splits_<k>.csv``; a bad file is named."""
    if not path.is_file():
        raise FileNotFoundError(
            f"The splits file {path} does not exist (argument splits: relative to root, or absolute). {_SPLITS_FORMAT}"
        )
    listed: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
    first: dict[str, tuple[str, int]] = {}
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        missing = [split for split in SPLITS if split not in header]
        if missing:
            raise ValueError(
                f"{path} has columns {header}, without {missing}. {_SPLITS_FORMAT} Pass such a file, or leave splits "
                "unset to read the splits from the CSV's split column."
            )
        columns = {split: header.index(split) for split in SPLITS}
        for fields in reader:
            if not fields or not any(field.strip() for field in fields):
                continue  # a blank line
            where = f"{path}, line {reader.line_num}"
            if len(fields) != len(header):
                raise ValueError(
                    f"{where}: has {len(fields)} fields under a header of {len(header)} ({','.join(header)}); got "
                    f"{fields!r}. Fix the row. {_SPLITS_FORMAT}"
                )
            cells = {split: fields[column].strip() for split, column in columns.items()}
            if all(cell in _BOOLEANS for cell in cells.values()):
                bool_file = _BOOL_FILE.fullmatch(path.name)
                beside = f" ({path.with_name(bool_file.group(1) + '.csv')})" if bool_file else ""
                raise ValueError(
                    f"{where}: holds {'/'.join(cells.values())} under {','.join(SPLITS)}: this is CLAM's "
                    "splits_<k>_bool.csv (one row per slide, True under its split), which is not read. Pass the "
                    f"splits_<k>.csv beside it{beside} instead. {_SPLITS_FORMAT}"
                )
            for split, slide_id in cells.items():
                if not slide_id:
                    continue  # the padding of a shorter column
                if slide_id in first:
                    split_before, line_before = first[slide_id]
                    leak = "" if split_before == split else " A slide in two splits leaks its label across them."
                    raise ValueError(
                        f"{where}, column {split}: slide {slide_id!r} is listed again (first at line {line_before}, "
                        f"column {split_before}).{leak} Each slide belongs to one split: remove the repeated entry."
                    )
                first[slide_id] = (split, reader.line_num)
                listed[split][slide_id] = reader.line_num
    return listed


def _check_classes_argument(classes: Sequence[str], num_classes: int | None) -> list[str]:
    """The ``classes`` argument as a list of class names; a string, a non-name, a repeat or a count off is refused."""
    example = "e.g. classes=['normal', 'cancer'] (--data.init_args.classes=[normal,cancer]), class 0 first"
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise ValueError(f"classes must be a list of the class names, {example}; got {classes!r}.")
    names = list(classes)
    bad = [name for name in names if not isinstance(name, str) or not name or name != name.strip()]
    if bad:
        raise ValueError(
            f"classes must hold the labels as the CSV spells them (non-empty strings, no surrounding spaces), "
            f"{example}; got {names!r}, with {bad!r}. Integer labels are class ids already: leave classes unset."
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"classes lists {repeated} more than once: {names!r}. List each class once, {example}.")
    if len(names) < 2:
        raise ValueError(f"classes must list at least 2 classes, {example}; got {names!r}.")
    if num_classes is not None and num_classes != len(names):
        raise ValueError(
            f"classes lists {len(names)} classes ({names!r}) but num_classes={num_classes}: leave num_classes unset "
            "(classes gives it), or make them agree."
        )
    return names


def _id_mapping(classes: Sequence[Any]) -> str:
    return ", ".join(f"{index} = {name!r}" for index, name in enumerate(classes))


def _examples(items: Sequence[str], total: int) -> str:
    return ", ".join(items[:_SHOWN]) + (", ..." if total > _SHOWN else "")
