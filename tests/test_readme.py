"""The README's Python example runs as written, and its two commands are the ones CI and users run."""

import pytest

from tests.helpers.doc_blocks import block, fenced_blocks, read_page, run_python

README = read_page("README.md")


def test_the_two_commands_are_there():
    assert block("README.md", "quickstart-command", "bash").strip() == (
        "pip install . && lightning-regs fit --config examples/quickstart.yaml"
    )
    assert "pytest" in block("README.md", "test-command", "bash")


def _python_blocks() -> list[str]:
    return fenced_blocks(README, "python")


@pytest.mark.slow
def test_the_own_module_example_runs(tmp_path, monkeypatch):
    code = _python_blocks()[0]
    monkeypatch.chdir(tmp_path)
    short = code.replace("Trainer(max_epochs=20,", "Trainer(max_epochs=2, enable_progress_bar=False, logger=False,")
    assert short != code
    namespace = run_python(short, "README.md")
    trainer, callback = namespace["trainer"], namespace["trainer"].callbacks[0]
    assert trainer.current_epoch == 2 and bool(callback.table.seen.all())
    assert float(trainer.callback_metrics["train/acc"]) > 0.5


@pytest.mark.slow
def test_the_own_model_local_learning_example_runs(tmp_path, monkeypatch):
    code = _python_blocks()[1]
    monkeypatch.chdir(tmp_path)
    short = code.replace("Trainer(max_epochs=5)", "Trainer(max_epochs=1, limit_train_batches=2, logger=False)")
    assert short != code
    namespace = run_python(short, "README.md")
    module = namespace["trainer"].lightning_module
    assert module.num_local_modules == 4 and module.local_input_shape == (3, 32, 32)
