"""Run each method card's first (tested) code block in this process, as written; print one JSON line per card.

``python tests/helpers/run_card_examples.py docs/methods/a.md docs/methods/b.md`` — used by
``tests/test_plain_install.py`` in a subprocess without the optional extras.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repository, for tests.helpers
from tests.helpers.doc_blocks import fenced_blocks, run_python


def run_card(card: Path) -> dict:
    """Execute the card's first tested block in a fresh directory; what ran, what it measured, what it warned."""
    (code, *_) = fenced_blocks(card.read_text(), "python", "tested-example")
    namespace: dict = {}
    result: dict = {"card": card.name, "ok": True, "error": None, "measured_steps": {}, "warnings": []}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as directory, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        os.chdir(directory)
        try:
            namespace = run_python(code, card, card.stem + "_example")
        except BaseException:  # reported to the parent test, which fails with it
            result["ok"], result["error"] = False, traceback.format_exc()[-3000:]
        finally:
            os.chdir(cwd)
    trainer = namespace.get("trainer")
    for callback in getattr(trainer, "callbacks", []):
        if hasattr(callback, "measured_steps"):
            result["measured_steps"][type(callback).__name__] = list(callback.measured_steps)
    result["warnings"] = sorted({str(w.message) for w in caught})
    return result


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print("CARD " + json.dumps(run_card(Path(path))), flush=True)
