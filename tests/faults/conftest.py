"""Every test of the fault suite names its area and expected outcome (see ``tests/faults/__init__.py``)."""

from __future__ import annotations

import pytest

from tests.faults import AREAS, OUTCOMES


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" not in item.nodeid.replace("\\", "/"):
            continue
        marker = item.get_closest_marker("fault")
        if marker is None:
            raise pytest.UsageError(
                f"{item.nodeid}: a fault-suite test needs @pytest.mark.fault(area=..., outcome=...)"
            )
        area, outcome = marker.kwargs.get("area"), marker.kwargs.get("outcome")
        if area not in AREAS or outcome not in OUTCOMES:
            raise pytest.UsageError(
                f"{item.nodeid}: fault(area={area!r}, outcome={outcome!r}); area is one of {AREAS}, outcome one of "
                f"{OUTCOMES}"
            )
