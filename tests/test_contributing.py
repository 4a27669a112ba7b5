"""CONTRIBUTING.md's worked example runs as written (its example config runs in tests/test_example_configs.py)."""

from tests.helpers.doc_blocks import block, run_python


def test_the_worked_example_runs_as_written(tmp_path, monkeypatch, capsys):
    code = block("CONTRIBUTING.md")
    monkeypatch.chdir(tmp_path)
    namespace = run_python(code, "CONTRIBUTING.md", "contributing_example")
    assert namespace["trainer"].global_step == 5
    assert "trained 5 steps" in capsys.readouterr().out
