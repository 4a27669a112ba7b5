"""Skip markers for tests that need hardware this machine may not have."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
import torch

__all__ = ["requires_cuda"]

F = TypeVar("F", bound=Callable)


def requires_cuda(min_gpus: int = 1) -> Callable[[F], F]:
    """Mark a test ``cuda`` and skip it unless at least ``min_gpus`` CUDA devices are visible.

    ``pytest -m cuda`` runs just these (on a machine with a GPU).
    """
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    skip = pytest.mark.skipif(available < min_gpus, reason=f"needs {min_gpus} CUDA GPU(s), found {available}")

    def decorate(test: F) -> F:
        return pytest.mark.cuda(skip(test))

    return decorate
