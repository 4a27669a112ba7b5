"""Argument checks shared by every public constructor: one message shape, naming the argument, value and range.

Each check raises ``TypeError`` for a value of the wrong type (a ``bool`` where a number is expected included) and
``ValueError`` for one out of range (``nan`` and ``inf`` included, unless allowed), with the message
``"<owner>: <name> must be <what is allowed>, got <value>."``. Pure Python: no torch, no Lightning.

Example::

    >>> check_number("MyCallback", "alpha", 0.5, low=0, high=1)
    0.5
    >>> check_number("MyCallback", "alpha", float("nan"), low=0, high=1)
    Traceback (most recent call last):
    ...
    ValueError: MyCallback: alpha must be a finite number in [0, 1], got nan.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "check_bool",
    "check_choice",
    "check_int",
    "check_int_ids",
    "check_number",
    "check_optional_number",
    "check_range_pair",
    "check_string",
]


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {low:g}"
    if low is None:
        return f" {'<' if high_open else '<='} {high:g}"
    return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_number(
    owner: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float: a finite real number (not a bool) in the interval from ``low`` to ``high``."""
    what = f"a finite number{_interval(low, high, low_open, high_open)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be {what}, got {value!r} ({type(value).__name__}).")
    number = float(value)
    if (
        not math.isfinite(number)
        or (low is not None and (number < low or (low_open and number == low)))
        or (high is not None and (number > high or (high_open and number == high)))
    ):
        raise ValueError(f"{owner}: {name} must be {what}, got {value!r}.")
    return number


def check_optional_number(owner: str, name: str, value: Any, **bounds: Any) -> float | None:
    """:func:`check_number`, or ``None`` as it is."""
    return None if value is None else check_number(owner, name, value, **bounds)


def check_int(owner: str, name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int: an integer (not a bool, not a float) in ``[low, high]``."""
    what = f"an int{_interval(low, high, False, False)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be {what}, got {value!r} ({type(value).__name__}).")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{owner}: {name} must be {what}, got {value!r}.")
    return int(value)


def check_bool(owner: str, name: str, value: Any) -> bool:
    """``value``, which must be ``True`` or ``False`` (not ``0``, ``"no"`` or ``None``)."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be True or False, got {value!r} ({type(value).__name__}).")
    return value


def check_choice(owner: str, name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value``, which must be one of ``choices``."""
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {list(choices)}, got {value!r}.")
    return value


def check_string(owner: str, name: str, value: Any) -> str:
    """``value``, a non-empty string."""
    if not isinstance(value, str):
        raise TypeError(f"{owner}: {name} must be a non-empty str, got {value!r} ({type(value).__name__}).")
    if not value.strip():
        raise ValueError(f"{owner}: {name} must be a non-empty str, got {value!r}.")
    return value


def check_int_ids(
    owner: str, name: str, values: Any, *, low: int | None = None, high: int | None = None, allow_empty: bool = False
) -> list[int]:
    """``values`` as a list of distinct ints in ``[low, high]`` (non-empty unless ``allow_empty``)."""
    what = f"a list of distinct int ids{_interval(low, high, False, False)}"
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{owner}: {name} must be {what}, got {values!r} ({type(values).__name__}).")
    values = list(values.tolist() if hasattr(values, "tolist") else values)
    wrong = [v for v in values if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
    if wrong:
        raise TypeError(f"{owner}: {name} must be {what}, got {values!r}: {wrong} are not ints.")
    if not values and not allow_empty:
        raise ValueError(f"{owner}: {name} must be {what} and not empty, got {values!r}.")
    duplicated = sorted({int(v) for v in values if values.count(v) > 1})
    if duplicated:
        raise ValueError(f"{owner}: {name} must be {what}, got {values!r}: {duplicated} appear more than once.")
    outside = [int(v) for v in values if (low is not None and v < low) or (high is not None and v > high)]
    if outside:
        raise ValueError(f"{owner}: {name} must be {what}, got {values!r}: {outside} lie outside.")
    return [int(v) for v in values]


def check_range_pair(owner: str, name: str, value: Any) -> tuple[float, float]:
    """``value`` as ``(low, high)``: two finite numbers with ``low < high``."""
    what = "(low, high): two finite numbers with low < high"
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{owner}: {name} must be {what}, got {value!r}.")
    pair = list(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in pair):
        raise TypeError(f"{owner}: {name} must be {what}, got {value!r}.")
    low, high = float(pair[0]), float(pair[1])
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"{owner}: {name} must be {what}, got {value!r}.")
    return low, high
