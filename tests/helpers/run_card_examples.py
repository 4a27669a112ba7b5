"""Run each method card's first (tested) code block in this process, as written; print one JSON line per card.

``python tests/helpers/run_card_examples.py docs/methods/a.md docs/methods/b.md`` — used by
``tests/test_plain_install.py`` in a subprocess without the optional extras.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

TESTED = re.compile(r"<!-- tested-example -->\s*```python\n(.*?)```", re.S)


def run_card(card: Path) -> dict:
    """Execute the card's first tested block in a fresh directory; what ran, what it measured, what it warned."""
    (code, *_) = TESTED.findall(card.read_text())
    namespace: dict = {"__name__": card.stem + "_example"}
    result: dict = {"card": card.name, "ok": True, "error": None, "measured_steps": {}, "warnings": []}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as directory, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        os.chdir(directory)
        try:
            exec(compile(code, str(card), "exec"), namespace)
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
