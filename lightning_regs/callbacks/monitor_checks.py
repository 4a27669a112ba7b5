"""Argument checks the monitors share: the point sets and the layers a monitor measures."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["check_layer_names", "check_sets"]


def check_sets(owner: str, sets: str | Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
    """The point sets a monitor measures: one name (a str) or a non-empty sequence of distinct names of ``allowed``."""
    names = [sets] if isinstance(sets, str) else sets
    if not isinstance(names, Sequence):
        raise TypeError(f"{owner}: sets must be a name or a list of names of {list(allowed)}, got {sets!r}.")
    names = list(names)
    unknown = [name for name in names if name not in allowed]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if not names or unknown or duplicated:
        problem = f": {unknown} are not sets" if unknown else f": {duplicated} appear more than once" if names else ""
        raise ValueError(
            f"{owner}: sets must be a non-empty list of distinct names of {list(allowed)}, got {names!r}{problem}."
        )
    return tuple(names)


def check_layer_names(owner: str, layers: str | Sequence[str], name: str = "layers") -> list[str]:
    """Module names: one (a str) or a non-empty list of distinct non-empty strings."""
    names = [layers] if isinstance(layers, str) else layers
    if not isinstance(names, Sequence) or not all(isinstance(layer, str) and layer for layer in names):
        raise TypeError(f"{owner}: {name} must be module names (non-empty strs), got {layers!r}.")
    names = list(names)
    duplicated = sorted({layer for layer in names if names.count(layer) > 1})
    if not names or duplicated:
        problem = f": {duplicated} appear more than once" if duplicated else ""
        raise ValueError(f"{owner}: {name} must be a non-empty list of distinct module names, got {names!r}{problem}.")
    return names
