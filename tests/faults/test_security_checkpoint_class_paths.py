"""A checkpoint cannot steer loading into importing a module: nested class paths must name what is already imported.

Lightning 2.6.6 allowlists the ``_instantiator`` and checks the top-level ``_class_path``; the nested ``class_path``
of a saved config (``backbone: {class_path: ...}``) jsonargparse would import and instantiate. The canary module
written here sets an environment variable when imported: it must never be.
"""

from __future__ import annotations

import io
import os
import sys
import textwrap

import pytest
import torch
import yaml

from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.tasks import ImageClassifier, LocalLearningClassifier
from lightning_regs.trusted_loading import UntrustedClassPathError

REFUSED = pytest.mark.fault(area="security", outcome="refused")
HANDLED = pytest.mark.fault(area="security", outcome="handled")
INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
CANARY = "LIGHTNING_REGS_CANARY_IMPORTED"


@pytest.fixture
def canary(tmp_path, monkeypatch) -> str:
    """A module on the path whose import leaves a trace; returns its name."""
    name = f"canary_backbone_{os.getpid()}_{tmp_path.name}".replace("-", "_")
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(f"""
        import os
        from torch import nn
        os.environ[{CANARY!r}] = "yes"

        class Canary(nn.Module):
            def __init__(self, num_classes: int = 10):
                super().__init__()
                self.fc = nn.Linear(64, num_classes)

            def forward(self, x):
                return self.fc(x.flatten(1))
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(CANARY, raising=False)
    yield name
    sys.modules.pop(name, None)


def _backbone(name: str, nested: bool) -> dict:
    canary = {"class_path": f"{name}.Canary", "init_args": {"num_classes": 10}}
    if not nested:
        return canary
    return {"class_path": "torch.nn.Sequential", "init_args": {"args": [canary]}}  # one level deeper


def _checkpoint(hparams: dict) -> dict:
    return {"state_dict": {}, "hyper_parameters": hparams, "pytorch-lightning_version": "2.6.6"}


def _task_hparams(name: str, nested: bool = False, **extra) -> dict:
    return {"_instantiator": INSTANTIATOR, "backbone": _backbone(name, nested), "num_classes": 10, **extra}


def _assert_not_imported(name: str) -> None:
    assert name not in sys.modules and CANARY not in os.environ


@REFUSED
@pytest.mark.parametrize("nested", [False, True], ids=["backbone", "inside-init-args"])
@pytest.mark.parametrize("task", [ImageClassifier, LocalLearningClassifier])
def test_a_checkpoint_naming_a_module_not_imported_is_refused_before_any_import(tmp_path, canary, task, nested):
    path = tmp_path / "crafted.ckpt"
    torch.save(_checkpoint(_task_hparams(canary, nested)), path)
    with pytest.raises(
        UntrustedClassPathError,
        match=rf"asks {task.__name__}\.load_from_checkpoint to import and build '{canary}\.Canary' .*"
        rf"If you trust this checkpoint, import '{canary}' before loading it",
    ):
        task.load_from_checkpoint(path, strict=False)
    _assert_not_imported(canary)


@REFUSED
def test_a_checkpoint_given_as_a_file_object_is_checked_too(tmp_path, canary):
    buffer = io.BytesIO()
    torch.save(_checkpoint(_task_hparams(canary)), buffer)
    buffer.seek(0)
    with pytest.raises(UntrustedClassPathError, match=r"the checkpoint asks ImageClassifier\.load_from_checkpoint"):
        ImageClassifier.load_from_checkpoint(buffer, strict=False)
    _assert_not_imported(canary)


@REFUSED
def test_an_hparams_file_naming_a_module_not_imported_is_refused(tmp_path, canary):
    path, hparams_file = tmp_path / "plain.ckpt", tmp_path / "hparams.yaml"
    torch.save(_checkpoint({"_instantiator": INSTANTIATOR, "num_classes": 10}), path)
    hparams_file.write_text(yaml.safe_dump({"backbone": _backbone(canary, nested=False)}))
    with pytest.raises(UntrustedClassPathError, match=rf"{hparams_file.name} asks ImageClassifier.*'{canary}\.Canary'"):
        ImageClassifier.load_from_checkpoint(path, hparams_file=str(hparams_file), strict=False)
    _assert_not_imported(canary)


@REFUSED
def test_a_datamodule_checkpoint_naming_a_module_not_imported_is_refused(tmp_path, canary):
    path = tmp_path / "data.ckpt"
    hparams = {"_instantiator": INSTANTIATOR, "transform": {"class_path": f"{canary}.Canary"}}
    torch.save(_checkpoint(hparams), path)
    with pytest.raises(UntrustedClassPathError, match=r"asks DigitsDataModule\.load_from_checkpoint"):
        DigitsDataModule.load_from_checkpoint(path)
    _assert_not_imported(canary)


@REFUSED
def test_an_instantiator_outside_lightnings_allowlist_is_refused(tmp_path, canary):
    path = tmp_path / "crafted.ckpt"
    hparams = {"_instantiator": f"{canary}.Canary", "backbone": {"class_path": "torch.nn.Identity"}, "num_classes": 10}
    torch.save(_checkpoint(hparams), path)
    with pytest.raises(ValueError, match=r"not in the allowlist of trusted instantiators"):
        ImageClassifier.load_from_checkpoint(path, strict=False)
    _assert_not_imported(canary)


@HANDLED
def test_a_checkpoint_whose_classes_the_user_imported_loads(tmp_path, canary):
    path = tmp_path / "trusted.ckpt"
    torch.save(_checkpoint(_task_hparams(canary)), path)
    __import__(canary)  # the user trusts it and imports it first, as the error says
    task = ImageClassifier.load_from_checkpoint(path, strict=False)
    assert type(task.backbone).__module__ == canary and task.backbone.fc.out_features == 10


@HANDLED
def test_a_file_object_is_left_where_it_was_for_lightning_to_read(tmp_path):
    from lightning_regs.models import MLP

    buffer = io.BytesIO()
    torch.save(_checkpoint({"_instantiator": INSTANTIATOR, "backbone": {"class_path": "lightning_regs.models.MLP",
                "init_args": {"in_features": 64, "num_classes": 10}}, "num_classes": 10}), buffer)  # fmt: skip
    buffer.seek(0)
    task = ImageClassifier.load_from_checkpoint(buffer, strict=False)
    assert isinstance(task.backbone, MLP)
