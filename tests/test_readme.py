"""The README's Python example runs as written, and its two commands are the ones CI and users run."""

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def fenced_block_after(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)```", README, re.S)
    assert match, f"README.md lacks the <!-- {marker} --> block"
    return match.group(1).strip()


def test_the_two_commands_are_there():
    assert fenced_block_after("quickstart-command") == (
        "pip install . && lightning-regs fit --config examples/quickstart.yaml"
    )
    assert "pytest" in fenced_block_after("test-command")


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.mark.slow
def test_the_own_module_example_runs(tmp_path, monkeypatch):
    code = _python_blocks()[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    short = code.replace("Trainer(max_epochs=20,", "Trainer(max_epochs=2, enable_progress_bar=False, logger=False,")
    assert short != code
    exec(compile(short, "README.md", "exec"), namespace)
    trainer, callback = namespace["trainer"], namespace["trainer"].callbacks[0]
    assert trainer.current_epoch == 2 and bool(callback.table.seen.all())
    assert float(trainer.callback_metrics["train/acc"]) > 0.5


@pytest.mark.slow
def test_the_own_model_local_learning_example_runs(tmp_path, monkeypatch):
    code = _python_blocks()[1]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    short = code.replace("Trainer(max_epochs=5)", "Trainer(max_epochs=1, limit_train_batches=2, logger=False)")
    assert short != code
    exec(compile(short, "README.md", "exec"), namespace)
    module = namespace["trainer"].lightning_module
    assert module.num_local_modules == 4 and module.local_input_shape == (3, 32, 32)
