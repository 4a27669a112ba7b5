"""The method card's own-module example runs as written (the PS-KD example configs run in test_example_configs.py)."""

from lightning_regs.callbacks import ProgressiveSelfKD
from tests.helpers.doc_blocks import block, run_python_with_warnings

CARD = "docs/methods/pskd.md"


def test_the_own_module_example_runs(tmp_path, monkeypatch):
    code = block(CARD)
    monkeypatch.chdir(tmp_path)
    namespace, messages = run_python_with_warnings(code, CARD, "pskd_example")
    trainer = namespace["trainer"]
    (pskd,) = [c for c in trainer.callbacks if isinstance(c, ProgressiveSelfKD)]
    assert trainer.current_epoch == 3 and bool(pskd.table.seen.all())
    assert (pskd.table.num_samples, pskd.table.num_classes) == (1500, 10)  # the classes from the logits
    assert float(trainer.callback_metrics["val/acc"]) > 0.8  # it learns the digits in three epochs
    # accepts_soft_targets = True: the module declared it reads class_ids(batch), so no soft-target warning
    assert not [m for m in messages if "accepts_soft_targets" in m]
