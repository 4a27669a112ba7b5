"""Every method card sizes each departure from the official code, and leaves none of the template's slots unfilled."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

METHODS = Path(__file__).resolve().parents[1] / "docs" / "methods"
TEMPLATE = METHODS / "_template.md"
CARDS = sorted(path for path in METHODS.glob("*.md") if path != TEMPLATE)


@pytest.mark.parametrize("card", CARDS, ids=lambda path: path.stem)
def test_every_departure_has_a_measured_size_or_says_why_not(card: Path):
    text = card.read_text()
    table = text.split("## Departures from the official code", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("|") and not line.startswith("|---")][1:]
    assert rows, f"{card.name}: the departures table has no row"
    for row in rows:
        size = row.rstrip().rstrip("|").rsplit("|", 1)[-1].strip()
        assert size, f"{card.name}: a departure without its size: {row[:80]}"


@pytest.mark.parametrize("card", CARDS, ids=lambda path: path.stem)
def test_no_placeholder_is_left_in_a_card(card: Path):
    text = card.read_text()
    # a name to fill in (AEM_BENCHMARK_TABLE), the template's <angle-bracket> slots, or a note to self
    slot = r"\b[A-Z]+(?:_[A-Z]+)*_(?:TABLE|FIGURES?|RESULTS?|NUMBERS?|PLACEHOLDER)\b"
    pattern = slot + r"|<[A-Z][a-z]+[^<>]*>|\bTODO\b|\bTBD\b"
    leftovers = re.findall(pattern, text)
    assert not leftovers, f"{card.name} still holds placeholders {leftovers}"
