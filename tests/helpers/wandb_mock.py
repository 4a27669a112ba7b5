"""A fake ``wandb`` package, installed in ``sys.modules`` so WandbLogger runs with no network and no files."""

from __future__ import annotations

from types import ModuleType
from unittest import mock

__all__ = ["make_wandb_modules"]


class FakeRun:
    """Stands for ``wandb.wandb_run.Run`` in ``isinstance`` checks."""


class FakeRunDisabled:
    """Stands for ``wandb.sdk.lib.RunDisabled`` in ``isinstance`` checks."""


def make_wandb_modules() -> dict[str, ModuleType]:
    """The fake ``wandb`` package and the submodules Lightning imports, keyed by module name.

    ``modules["wandb"].init()`` returns one recording run, ``modules["wandb"].run_mock``: assert on
    its ``log.call_args_list`` to see what was sent to W&B.
    """
    wandb = ModuleType("wandb")
    run = mock.MagicMock(name="run")
    run.dir = "."
    run.id = "mock-run"
    run.name = "mock-run"
    wandb.run_mock = run
    wandb.init = mock.MagicMock(name="init", return_value=run)
    wandb.run = None
    for name in ("Settings", "Image", "Table", "Histogram", "Artifact", "Api", "Audio", "Video", "plot"):
        setattr(wandb, name, mock.MagicMock(name=name))
    sdk = ModuleType("wandb.sdk")
    lib = ModuleType("wandb.sdk.lib")
    lib.RunDisabled = FakeRunDisabled
    sdk.lib = lib
    wandb_run = ModuleType("wandb.wandb_run")
    wandb_run.Run = FakeRun
    wandb.sdk = sdk
    wandb.wandb_run = wandb_run
    return {"wandb": wandb, "wandb.sdk": sdk, "wandb.sdk.lib": lib, "wandb.wandb_run": wandb_run}
