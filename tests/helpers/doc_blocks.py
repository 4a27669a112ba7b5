"""The fenced code blocks of the project's Markdown pages: find them, and run the Python ones as written.

Pages mark the blocks that tests read with an HTML comment right above the fence::

    <!-- tested-example -->
    ```python
    ...
    ```

``block(page, "tested-example")`` returns that block's body; ``run_python(code, page)`` executes it in a fresh
namespace (tracebacks name the page), ``run_python_with_warnings`` also returns the warnings it raised.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CARDS = ROOT / "docs" / "methods"
# Every method card (the template and other pages starting with "_" are not cards).
ALL_CARDS = sorted(path.name for path in CARDS.glob("*.md") if not path.name.startswith("_"))


def read_page(page: str | Path) -> str:
    """The text of a Markdown page, given relative to the repository (``"README.md"``) or as a path."""
    return (ROOT / page).read_text()


def fenced_blocks(text: str, language: str = "python", marker: str | None = None) -> list[str]:
    """The bodies of the fenced blocks of ``language`` in ``text``; with ``marker``, only those right after
    ``<!-- marker -->``.

    >>> fenced_blocks("<!-- a -->\\n```bash\\nls\\n```\\n```bash\\npwd\\n```\\n", "bash", "a")
    ['ls\\n']
    """
    after = rf"<!-- {re.escape(marker)} -->\s*" if marker else ""
    return re.findall(rf"{after}```{re.escape(language)}\n(.*?)```", text, re.S)


def block(page: str | Path, marker: str = "tested-example", language: str = "python") -> str:
    """The one block of ``page`` marked ``<!-- marker -->`` (an error if there is none or several)."""
    found = fenced_blocks(read_page(page), language, marker)
    assert len(found) == 1, f"{page}: {len(found)} ```{language} blocks after <!-- {marker} -->, expected one"
    return found[0]


def run_python(code: str, filename: str | Path, name: str | None = None) -> dict:
    """Execute ``code`` in a fresh namespace (``__name__`` set to ``name`` when given); return the namespace."""
    namespace: dict = {} if name is None else {"__name__": name}
    exec(compile(code, str(filename), "exec"), namespace)
    return namespace


def run_python_with_warnings(code: str, filename: str | Path, name: str | None = None) -> tuple[dict, list[str]]:
    """``run_python``, recording every warning raised (``simplefilter("always")``); the namespace and the messages."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        namespace = run_python(code, filename, name)
    return namespace, [str(w.message) for w in caught]
