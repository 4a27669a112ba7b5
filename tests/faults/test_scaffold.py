"""The fault suite's own rules: every case declares its area and outcome."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.faults import AREAS, OUTCOMES
from tests.faults.conftest import pytest_collection_modifyitems


def _item(nodeid: str, **kwargs: str) -> SimpleNamespace:
    marker = SimpleNamespace(kwargs=kwargs) if kwargs else None
    return SimpleNamespace(nodeid=nodeid, get_closest_marker=lambda name: marker)


@pytest.mark.fault(area="cli", outcome="refused")
@pytest.mark.parametrize(
    ("declared", "words"),
    [({}, "needs @pytest.mark.fault"), ({"area": "gpu", "outcome": "refused"}, "area is one of"),
     ({"area": "data", "outcome": "silent"}, "outcome one of")],
)  # fmt: skip
def test_a_case_without_a_valid_declaration_is_refused_at_collection(declared, words) -> None:
    with pytest.raises(pytest.UsageError, match=words):
        pytest_collection_modifyitems([_item("tests/faults/test_x.py::test_y", **declared)])


@pytest.mark.fault(area="cli", outcome="handled")
def test_declared_cases_and_tests_outside_the_suite_pass_collection() -> None:
    pytest_collection_modifyitems([_item("tests/faults/test_x.py::test_y", area="data", outcome="refused")])
    pytest_collection_modifyitems([_item("tests/test_other.py::test_z")])
    assert "security" in AREAS and OUTCOMES == ("refused", "handled")
