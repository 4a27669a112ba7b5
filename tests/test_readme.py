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


@pytest.mark.slow
def test_the_python_example_runs(tmp_path, monkeypatch, capsys):
    (code,) = re.findall(r"```python\n(.*?)```", README, re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(
        compile(
            code.replace("Trainer(max_epochs=20,", "Trainer(max_epochs=2, enable_progress_bar=False,"),
            "README.md",
            "exec",
        ),
        namespace,
    )
    assert namespace["trainer"].current_epoch == 2
    assert "val/acc" in capsys.readouterr().out
