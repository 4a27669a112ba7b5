"""The information-plane figure: I(T;Y) against I(X;T), one line per layer, points coloured by the measured step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightning_regs.callbacks._plots import MISSING_MATPLOTLIB

__all__ = ["information_plane_figure"]

Curve = tuple[Sequence[float], Sequence[float]]  # (I(X;T) values, I(T;Y) values), one per measured step


def information_plane_figure(
    steps: Sequence[int],
    curves: Mapping[str, Curve],
    errors: Mapping[str, Curve] | None = None,
    title: str = "Information plane",
    axes: Any = None,
) -> Any:
    """A matplotlib ``Figure``: for each layer, its path ``(I(X;T), I(T;Y))`` over ``steps``, with a colour bar.

    Each layer is one line (its own colour, in the legend); the points on it are coloured by the step they were
    measured at (a symmetric-log colour scale, so step 0 shows); ``errors[layer]`` (standard errors of both
    coordinates) draws ±1 error bars. ``axes``: draw into these matplotlib axes (a panel of a larger figure) instead
    of a new figure; their figure is returned.

    Example::

        >>> fig = information_plane_figure([0, 10, 100], {"fc1": ([1.0, 2.0, 1.5], [0.2, 0.8, 0.9])},
        ...                                errors={"fc1": ([0.1, 0.1, 0.1], [0.05, 0.05, 0.05])})
        >>> type(fig).__name__, len(fig.axes)  # the plane and its colour bar
        ('Figure', 2)
    """
    try:
        from matplotlib.colors import SymLogNorm
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(f"Plots need matplotlib: {MISSING_MATPLOTLIB}.") from error
    own = axes is None
    figure = Figure(figsize=(6, 4.4), dpi=100) if own else axes.figure
    axes = figure.subplots() if own else axes
    norm = SymLogNorm(linthresh=1.0, vmin=0.0, vmax=max(max(steps, default=1), 1), base=10)
    errors = errors or {}
    scatter = None
    for label, (ixt, ity) in curves.items():
        count = min(len(ixt), len(ity))
        x, y, measured = list(ixt)[:count], list(ity)[:count], list(steps)[-count:] if count else []
        (line,) = axes.plot(x, y, linewidth=1.6, alpha=0.8, label=label)
        spread = errors.get(label)
        if spread is not None and len(spread[0]) == count == len(spread[1]):
            axes.errorbar(x, y, xerr=list(spread[0]), yerr=list(spread[1]), fmt="none", ecolor=line.get_color(),
                          alpha=0.4, linewidth=0.8)  # fmt: skip
        scatter = axes.scatter(x, y, c=measured, cmap="viridis", norm=norm, s=16, edgecolors="none", zorder=3)
    if scatter is not None:
        figure.colorbar(scatter, ax=axes, label="optimizer step")
    axes.set_xlabel("I(X; T) [bits]")
    axes.set_ylabel("I(T; Y) [bits]")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(fontsize="small")
    if own:
        figure.tight_layout()
    return figure
