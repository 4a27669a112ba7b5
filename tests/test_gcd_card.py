"""The LegoGCD card's own-code block runs as written and does what it says."""

from __future__ import annotations

from tests.helpers.doc_blocks import block, run_python

CARD = "docs/methods/lego_gcd.md"


def test_card_example_runs(tmp_path, monkeypatch):
    code = block(CARD)
    monkeypatch.chdir(tmp_path)
    trainer = run_python(code, CARD, "lego_gcd_example")["trainer"]
    assert trainer.global_step == 2 and {"lego/ler", "lego/dkl"} <= set(trainer.callback_metrics)
    prior = trainer.lightning_module.prior_ema.prior
    assert abs(float(prior.sum()) - 1) < 1e-5 and float(prior.std()) > 0  # q̂ moved away from uniform
