"""The LegoGCD card's own-code block runs as written and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

CARD = Path(__file__).resolve().parents[1] / "docs" / "methods" / "lego_gcd.md"
TESTED = re.compile(r"<!-- tested-example -->\s*```python\n(.*?)```", re.S)


def test_card_example_runs(tmp_path, monkeypatch):
    (code,) = TESTED.findall(CARD.read_text())
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "lego_gcd_example"}
    exec(compile(code, str(CARD), "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.global_step == 2 and {"lego/ler", "lego/dkl"} <= set(trainer.callback_metrics)
    prior = trainer.lightning_module.prior_ema.prior
    assert abs(float(prior.sum()) - 1) < 1e-5 and float(prior.std()) > 0  # q̂ moved away from uniform


def test_card_opens_usage_with_the_own_code_block():
    text = CARD.read_text()
    usage = text[text.index("## How to use it") : text.index("\n## ", text.index("## How to use it") + 1)]
    assert usage.split("\n\n")[1].startswith("**Your own model and data.**")
    assert usage.index("<!-- tested-example -->") < usage.index("```")
