"""Every method card has the template's sections, in the template's order (a card may add its own)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

METHODS = Path(__file__).resolve().parents[1] / "docs" / "methods"
TEMPLATE = METHODS / "_template.md"
CARDS = sorted(path for path in METHODS.glob("*.md") if path != TEMPLATE)


def sections(path: Path) -> list[str]:
    return [line[3:].strip() for line in path.read_text().splitlines() if line.startswith("## ")]


def test_the_template_asks_for_the_departures_from_the_official_code():
    assert "Departures from the official code" in sections(TEMPLATE)


@pytest.mark.parametrize("card", CARDS, ids=lambda path: path.stem)
def test_the_card_has_the_templates_sections_in_order(card: Path):
    found = sections(card)
    missing = [name for name in sections(TEMPLATE) if name not in found]
    assert not missing, f"{card.name} lacks the template's sections {missing}"
    order = [found.index(name) for name in sections(TEMPLATE)]
    assert order == sorted(order), f"{card.name}: the template's sections are out of order: {found}"


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
