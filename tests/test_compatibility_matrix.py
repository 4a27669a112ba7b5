"""The compatibility matrix (``tests/harness/matrix.py``): one test per cell it owns, and the page it generates.

``python -m pytest -m matrix`` runs the cells: each checks that its registry entry, run the column's way, is what
the matrix declares (equal to the reference within the tolerance, or the declared error at the start of fit).
The unmarked tests check that every cell is declared and that ``docs/compatibility.md`` is what the
declarations render.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import tests.test_method_harness as harness_tests
from tests.harness import matrix
from tests.harness.matrix import COLUMNS, DECLARED, Error, MatrixSession, Proven
from tests.harness.matrix_page import DOC, render
from tests.harness.registry import EVALUATION_ONLY, EVALUATION_ONLY_COLUMNS, REGISTRY

CELLS = [
    pytest.param(entry, col, id=f"{col.key}-{entry.name}")
    for col in COLUMNS
    for entry in REGISTRY
    if not (isinstance(declared := matrix.cell(entry.name, col.key), Proven) and declared.by)
]


@pytest.fixture(scope="session")
def session(tmp_path_factory):
    """The runs cells share (each entry's reference run, each two-process column), computed once per session."""
    return MatrixSession(tmp_path_factory.mktemp("matrix"))


@pytest.mark.matrix
@pytest.mark.parametrize(("entry", "col"), CELLS)
def test_cell(entry, col, session):
    matrix.verify(entry, col, session)


def test_every_registry_entry_has_a_declared_cell_in_every_column():
    assert set(DECLARED) == {entry.name for entry in REGISTRY}, "declare a row in matrix.DECLARED for each entry"
    for name, row in DECLARED.items():
        assert list(row) == [col.key for col in COLUMNS], f"{name}: declare one cell per column, in column order"
        for key, declared in row.items():
            assert isinstance(declared, (Proven, Error)), f"({name}, {key}) is neither Proven nor Error"
            errors = [declared] if isinstance(declared, Error) else [declared.refuses] if declared.refuses else []
            for error in errors:
                re.compile(error.pattern)
                assert issubclass(error.type, BaseException) and error.why and error.fix


def test_cells_proven_by_the_method_harness_name_a_test_that_runs_for_the_entry():
    for entry in REGISTRY:
        for col in COLUMNS:
            declared = matrix.cell(entry.name, col.key)
            if not (isinstance(declared, Proven) and declared.by):
                assert col.prove is not None, f"({entry.name}, {col.key}): the column proves no cell itself"
                continue
            path, name = declared.by.split("::")
            assert path == "tests/test_method_harness.py" and callable(getattr(harness_tests, name, None)), declared.by
            if "resumed" in name:  # the harness skips the entries it cannot stop; the matrix must prove those
                assert entry.no_resume_because is None, f"{entry.name}: the harness skips {name}; prove it here"
            if "ddp" in name:  # the harness compares with the entry's own tolerance, or not at all
                assert declared.tol == entry.atol, f"{entry.name}: declare the ddp cell with the entry's atol"
                assert declared.differs_because == entry.ddp_differs_because, (
                    f"{entry.name}: the ddp cell's differs_because must be the entry's ddp_differs_because"
                )


def test_the_compatibility_page_is_what_the_declarations_render():
    assert DOC.read_text() == render(), "docs/compatibility.md is stale: run python -m tests.harness.matrix"


def test_evaluation_only_tasks_declare_every_column_and_cite_tests_that_exist():
    assert set(EVALUATION_ONLY_COLUMNS) == set(EVALUATION_ONLY)
    for task, columns in EVALUATION_ONLY_COLUMNS.items():
        assert set(columns) == {col.key for col in COLUMNS}, task
        for text in columns.values():
            assert text.startswith(("✓", "does not apply:", "applies, not run yet")), text
            for path, name in re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", text):
                assert re.search(rf"^def {name}\(", Path(path).read_text(), re.MULTILINE), (task, name)
            assert not text.startswith("✓") or "::" in text, text
