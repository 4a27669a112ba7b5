"""Skip markers for tests that need hardware this machine may not have."""

from __future__ import annotations

import pytest
import torch

__all__ = ["requires_cuda"]


def requires_cuda(min_gpus: int = 1) -> pytest.MarkDecorator:
    """Skip unless at least ``min_gpus`` CUDA devices are visible; also marks the test ``cuda``."""
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return pytest.mark.skipif(available < min_gpus, reason=f"needs {min_gpus} CUDA GPU(s), found {available}")
