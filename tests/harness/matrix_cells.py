"""The compatibility matrix's declarations: what a cell promises (:class:`Proven`, :class:`Error`) and a column.

The matrix itself (every column and every entry's row) is in :mod:`tests.harness.matrix`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.harness.registry import MethodSetting

if TYPE_CHECKING:
    from tests.harness.matrix import MatrixSession
    from tests.harness.matrix_runs import Outcome

HARNESS_TESTS = "tests/test_method_harness.py"


@dataclass(frozen=True)
class Error:
    """The cell raises ``type`` (or a subclass) with a message matching ``pattern`` before the first optimizer step.

    Attributes:
        type: the exception class.
        pattern: a regular expression searched in the message.
        why: the short reason shown in the table.
        fix: what to do instead (the message should say it too).
    """

    type: type[BaseException]
    pattern: str
    why: str
    fix: str


@dataclass(frozen=True)
class Proven:
    """The cell equals its column's reference within ``tol`` (what ``tol`` bounds is the column's ``compares``).

    Attributes:
        tol: the tolerance; its meaning (absolute, relative, ...) is the column's.
        by: the test that proves the cell when it is not a matrix cell (``single``, ``ddp``, ``stop and resume``).
        route: how the column's setting reaches the entry when not as the column says (shown in the table).
        refuses: the error the column's own way raises for this entry (tested with the cell).
        differs_because: why the run is not compared with its reference (it computes something else by design);
            the cell then proves that the run trains (finite, changed) and, with two processes, that the ranks end
            identical. ``tol`` is unused.
    """

    tol: float
    by: str | None = None
    route: str | None = None
    refuses: Error | None = None
    differs_because: str | None = None


Cell = Proven | Error


@dataclass(frozen=True)
class Column:
    """One way of running an entry.

    Attributes:
        key: short id (test ids, declarations).
        title: the table's header.
        runs: what the column runs (the doc's footnote).
        compares: the reference, what is compared and what the tolerance bounds (the doc's footnote).
        why_tol: why the tolerance is what it is.
        show: the tolerance as shown in a table cell.
        prove: ``prove(entry, cell, session)`` raises ``AssertionError`` unless the cell is proven.
        attempt: ``attempt(entry, root) -> Outcome``: the column's plain run (the one an :class:`Error` cell raises in).
        processes: for two-process columns, the per-rank environment: ``processes(rank) -> env``.
        expect: facts the Trainer must report in each process (two-process columns).
    """

    key: str
    title: str
    runs: str
    compares: str
    why_tol: str
    show: Callable[[float], str]
    prove: Callable[[MethodSetting, Proven, MatrixSession], None] | None = None
    attempt: Callable[[MethodSetting, Path], Outcome] | None = None
    processes: Callable[[int], dict[str, str]] | None = None
    expect: Mapping[str, Any] = field(default_factory=dict)


# How a column shows its tolerance in a table cell (``Column.show``).


def show_number(value: float) -> str:
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{value:g}").replace("e+", "e")


def show_atol(tol: float) -> str:
    return "exact" if tol == 0 else f"atol {show_number(tol)}"


def show_reference(tol: float) -> str:
    return "reference"


def show_relative_update(tol: float) -> str:
    return f"Δw ≤ {tol:.0%}"


def show_clip_bound(tol: float) -> str:
    return "exact, ‖g‖ ≤ c"
