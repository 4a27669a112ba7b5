"""The batch contract lives in one module: every key is named in ``lightning_regs.batch`` and nowhere else."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

import lightning_regs
from lightning_regs import batch as contract

PACKAGE = Path(lightning_regs.__file__).parent
KEYS = set(contract.CONTRACT)


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "batch.py")


def _key_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """Subscripts ``x["key"]``, ``.get("key")`` calls and module-level ``NAME = "key"`` that spell a key."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in KEYS:
            found.append((node.lineno, node.slice.value))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "pop", "setdefault")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value in KEYS
        ):
            found.append((node.lineno, node.args[0].value))
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value in KEYS:
            found.append((node.lineno, node.value.value))
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):
            found += [
                (node.lineno, e.value) for e in node.value.elts if isinstance(e, ast.Constant) and e.value in KEYS
            ]
    return found


def test_no_module_outside_batch_py_defines_or_spells_a_batch_key():
    offenders = []
    for path in _sources():
        for line, key in _key_literals(ast.parse(path.read_text())):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {key!r}")
    assert not offenders, "use the names of lightning_regs.batch instead of these literals:\n" + "\n".join(offenders)


def test_the_scan_finds_a_literal_key():  # the test above can fail
    assert _key_literals(ast.parse('MASK = "mask"\nx = batch["image"]\ny = batch.get("index")')) == [
        (2, "image"),
        (3, "index"),
        (1, "mask"),
    ]


def test_every_key_is_exported_and_in_the_design_table():
    design = (PACKAGE.parent / "docs" / "design.md").read_text()
    table = set(re.findall(r"^\| `(\w+)` \|", design, flags=re.M))
    assert table == KEYS
    for name in contract.__all__:
        assert hasattr(contract, name)
    assert {getattr(contract, n) for n in contract.__all__ if n.isupper() and n != "CONTRACT"} == KEYS


def test_datamodules_batch_re_exports_the_contract():
    from lightning_regs.datamodules import batch as old

    assert old.class_ids is contract.class_ids and old.IMAGE is contract.IMAGE


def test_read_step_unpacks_once():
    soft = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
    step = contract.read_step({"image": torch.zeros(2, 3), "target": soft, "hard_target": torch.tensor([0, 0])})
    assert step.labels.tolist() == [0, 0] and step.target is soft and step.index is None
    assert contract.read_step((torch.zeros(2, 3), soft)).labels.tolist() == [1, 0]
    with pytest.raises(ValueError, match="soft='argmax'"):
        contract.class_ids({"target": soft})
