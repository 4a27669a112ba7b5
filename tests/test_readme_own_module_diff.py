"""The README's "converting a module you already have" diff: both sides run, and each edit is the one needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.doc_blocks import block, run_python_with_warnings

DIFF = block("README.md", "own-module-diff", "diff")
METHODS = {"pskd": "ProgressiveSelfKD(alpha_T=0.8)", "label_smoothing": "LabelSmoothing(0.1)", "mixup": "MixUp(0.2)"}


def _side(keep: str) -> str:
    return "\n".join(line[1:] for line in DIFF.split("\n") if line[:1] in (" ", keep, ""))


BEFORE, AFTER = _side("-"), _side("+")


def _run(code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, list[str]]:
    monkeypatch.chdir(tmp_path)
    quiet = code.replace("Trainer(max_epochs=2", "Trainer(max_epochs=2, enable_progress_bar=False")
    return run_python_with_warnings(quiet, "README.md", "readme_diff")


def test_the_diff_has_the_three_edits_and_the_original_runs(tmp_path, monkeypatch):
    assert [n for n in (1, 2, 3) if f"edit {n}" in DIFF] == [1, 2, 3]
    namespace, _ = _run(BEFORE, tmp_path, monkeypatch)
    assert namespace["trainer"].global_step == 16  # 256 samples, batch 32, 2 epochs


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_converted_module_trains_with_each_method(method, tmp_path, monkeypatch):
    namespace, messages = _run(AFTER.replace(METHODS["pskd"], METHODS[method]), tmp_path, monkeypatch)
    trainer = namespace["trainer"]
    assert trainer.global_step == 16 and not [m for m in messages if "accepts_soft_targets" in m]
    if method == "pskd":
        assert bool(trainer.callbacks[0].table.seen.all())


def test_edit_3_is_what_pskd_alone_needs(tmp_path, monkeypatch):
    without_3 = AFTER.replace('return {"loss": loss, "logits": logits}', "return loss")
    assert without_3 != AFTER
    for method in ("label_smoothing", "mixup"):
        namespace, _ = _run(without_3.replace(METHODS["pskd"], METHODS[method]), tmp_path, monkeypatch)
        assert namespace["trainer"].global_step == 16
    with pytest.raises(Exception, match="logits"):
        _run(without_3, tmp_path, monkeypatch)


def test_the_unconverted_module_gets_a_named_error_pointing_at_edit_1(tmp_path, monkeypatch):
    code = "from lightning_regs.callbacks import LabelSmoothing\n" + BEFORE.replace(
        "Trainer(max_epochs=2)", "Trainer(max_epochs=2, callbacks=[LabelSmoothing(0.1)])"
    )
    with pytest.raises(TypeError, match="IndexedDataset"):
        _run(code, tmp_path, monkeypatch)


def test_a_missing_edit_2_is_the_one_time_warning_the_readme_names(tmp_path, monkeypatch):
    without_flag = AFTER.replace("    accepts_soft_targets = True", "    pass")
    assert without_flag != AFTER
    _, messages = _run(without_flag.replace(METHODS["pskd"], METHODS["label_smoothing"]), tmp_path, monkeypatch)
    assert len([m for m in messages if "accepts_soft_targets = True" in m]) == 1
