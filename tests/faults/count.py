"""Run the fault suite and print its cases by area and outcome: ``python -m tests.faults.count``.

A passing case counts under its declared outcome (``refused``: a named error; ``handled``: the right result); a
failing one counts as ``silent/unclear/crash`` and a timed-out one as ``hang``. Extra arguments go to pytest
(``python -m tests.faults.count -k mvtec``).
"""

from __future__ import annotations

import sys
from collections import Counter

import pytest

from tests.faults import AREAS, OUTCOMES

FAILED, HANG = "silent/unclear/crash", "hang"


class _Tally:
    def __init__(self) -> None:
        self.declared: dict[str, tuple[str, str]] = {}
        self.counts: Counter[tuple[str, str]] = Counter()
        self.failures: list[str] = []

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            marker = item.get_closest_marker("fault")
            if marker is not None:
                self.declared[item.nodeid] = (marker.kwargs["area"], marker.kwargs["outcome"])

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.nodeid not in self.declared or (report.when != "call" and not report.failed):
            return
        area, outcome = self.declared[report.nodeid]
        if report.failed:
            outcome = HANG if "Timeout" in str(report.longrepr) else FAILED
            self.failures.append(report.nodeid)
        elif report.skipped:
            outcome = "skipped"
        self.counts[(area, outcome)] += 1


def main(argv: list[str]) -> int:
    tally = _Tally()
    code = pytest.main(["tests/faults", "-q", "-p", "no:randomly", *argv], plugins=[tally])
    columns = [*OUTCOMES, FAILED, HANG, "skipped"]
    print(f"\n{'area':<12}" + "".join(f"{c:>22}" for c in columns) + f"{'total':>8}")
    for area in AREAS:
        row = [tally.counts[(area, c)] for c in columns]
        if sum(row):
            print(f"{area:<12}" + "".join(f"{v:>22}" for v in row) + f"{sum(row):>8}")
    totals = [sum(tally.counts[(a, c)] for a in AREAS) for c in columns]
    print(f"{'all':<12}" + "".join(f"{v:>22}" for v in totals) + f"{sum(totals):>8}")
    for nodeid in tally.failures:
        print(f"  not as declared: {nodeid}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
