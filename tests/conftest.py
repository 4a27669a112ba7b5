"""Shared fixtures: every test leaves the environment, the process group and the RNG as it found them."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.distributed as dist

from tests.helpers.wandb_mock import make_wandb_modules


@pytest.fixture(autouse=True)
def restore_environment():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def no_leaked_process_group():
    yield
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture(autouse=True)
def seeded():
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    yield
    torch.random.set_rng_state(state)


@pytest.fixture
def wandb_mock(monkeypatch):
    """Replace ``wandb`` with a recording fake for the duration of a test."""
    from lightning.pytorch.loggers import wandb as wandb_logger_module

    modules = make_wandb_modules()
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(wandb_logger_module, "_WANDB_AVAILABLE", True)
    return modules["wandb"]
