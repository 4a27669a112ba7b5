"""Check image files before training: missing, unreadable, blank (constant), duplicate and repeated entries.

Finding these at ``setup`` gives one report instead of a crash deep inside a DataLoader worker.

Example::

    >>> import tempfile
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory()
    >>> root = Path(tmp.name)
    >>> _ = (root / "bad.png").write_bytes(b"not an image")
    >>> report = image_report(root, ["bad.png", "gone.png"])
    >>> report["missing"], report["unreadable"]
    (['gone.png'], ['bad.png'])
    >>> tmp.cleanup()
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = ["REPORT_KINDS", "check_image_file", "format_report", "image_report"]

REPORT_KINDS = ("missing", "unreadable", "blank", "duplicates", "listed_twice")


def check_image_file(path: Path, full: bool = True) -> tuple[str, str | None]:
    """``(status, sha256 or None)`` of one file; status is ``ok``, ``missing``, ``unreadable`` or ``blank``.

    With ``full=False`` only existence is checked (no read).
    """
    if not path.is_file():
        return "missing", None
    if not full:
        return "ok", None
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            extrema = image.getextrema()
    except Exception:  # any decoder error is what would crash a worker on this file
        return "unreadable", digest
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    return ("blank" if all(low == high for low, high in bands) else "ok"), digest


def image_report(root: Path, filenames: Sequence[str], full: bool = True, workers: int = 8) -> dict[str, Any]:
    """Check ``root / f`` for every filename (in threads, each file once).

    ``duplicates`` are groups of different filenames with the same bytes; ``listed_twice`` are the
    filenames that ``filenames`` holds more than once (e.g. one file in a training and a test list).

    Returns:
        ``{"checked": int, "missing": [...], "unreadable": [...], "blank": [...], "duplicates": [[...], ...],
        "listed_twice": [...]}``, each list in the order of first listing, ``checked`` the number of
        distinct files (builtins only, so it can be saved as JSON or in a checkpoint).
    """
    counts = Counter(filenames)
    unique = list(counts)
    with ThreadPoolExecutor(max(workers, 1)) as pool:
        results = list(pool.map(lambda name: check_image_file(Path(root) / name, full), unique))
    report: dict[str, Any] = {"checked": len(unique), "missing": [], "unreadable": [], "blank": []}
    by_hash: dict[str, list[str]] = {}
    for filename, (status, digest) in zip(unique, results, strict=True):
        if status != "ok":
            report[status].append(filename)
        if digest is not None and status != "unreadable":
            by_hash.setdefault(digest, []).append(filename)
    report["duplicates"] = [group for group in by_hash.values() if len(group) > 1]
    report["listed_twice"] = [name for name, count in counts.items() if count > 1]
    return report


def format_report(report: dict[str, Any], title: str = "Image check") -> str:
    """A readable summary: the count of each finding and up to 5 examples.

    Example::

        >>> report = {"checked": 2, "missing": ["a.png"], "unreadable": [], "blank": [], "duplicates": []}
        >>> print(format_report({**report, "listed_twice": []}))
        Image check over 2 files:
          missing: 1 (e.g. a.png)
          unreadable: 0
          blank: 0
          duplicates: 0
          listed_twice: 0
    """
    lines = [f"{title} over {report['checked']} files:"]
    for kind in REPORT_KINDS:
        entries = report.get(kind, [])
        shown = ", ".join(" = ".join(e) if isinstance(e, list) else e for e in entries[:5])
        lines.append(f"  {kind}: {len(entries)}" + (f" (e.g. {shown})" if entries else ""))
    return "\n".join(lines)
