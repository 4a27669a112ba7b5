"""Compare two final states: weights, buffers and nested callback states, with a named first difference."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["assert_same_state", "assert_trained"]


def assert_same_state(expected: Any, actual: Any, atol: float, path: str = "state") -> None:
    """Assert equal structure and values (tensors within ``atol``, floats within ``atol``, the rest exactly)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{path}: expected a tensor, got {type(actual).__name__}"
        assert expected.shape == actual.shape and expected.dtype == actual.dtype, (
            f"{path}: {expected.dtype}{tuple(expected.shape)} vs {actual.dtype}{tuple(actual.shape)}"
        )
        if expected.is_floating_point():
            torch.testing.assert_close(
                actual, expected, rtol=0, atol=atol, equal_nan=True, msg=lambda message: f"{path}: {message}"
            )
        else:
            assert torch.equal(actual, expected), f"{path}: integer/bool tensors differ"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected a dict, got {type(actual).__name__}"
        assert sorted(map(str, expected)) == sorted(map(str, actual)), (
            f"{path}: keys {sorted(map(str, expected))} vs {sorted(map(str, actual))}"
        )
        for key in expected:
            assert_same_state(expected[key], actual[key], atol, f"{path}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(expected) == len(actual), f"{path}: lengths differ"
        for i, (a, b) in enumerate(zip(expected, actual, strict=True)):
            assert_same_state(a, b, atol, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert isinstance(actual, (int, float)), f"{path}: {expected} vs {actual}"
        both_nan = math.isnan(expected) and math.isnan(actual)  # NaN: no value to compare (an undefined statistic)
        assert both_nan or abs(expected - actual) <= atol, f"{path}: {expected} vs {actual}"
    else:
        assert expected == actual, f"{path}: {expected!r} vs {actual!r}"


def assert_trained(initial: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], what: str = "the run") -> None:
    """Every float weight and buffer is finite, and fit changed at least one of ``initial``'s tensors."""
    for name, value in weights.items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), f"{what}: {name} is not finite"
    changed = [name for name, value in initial.items() if not torch.equal(value, weights[name])]
    assert changed, f"{what}: fit changed no weight or buffer"
