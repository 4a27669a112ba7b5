"""Monitor curves against the optimizer step on a log axis: to W&B with a ``WandbLogger``, else a PNG file.

matplotlib (the ``plots`` extra) and wandb are imported only when a plot is drawn.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

__all__ = ["MISSING_MATPLOTLIB", "can_plot", "plot_curves", "plot_directory", "publish_figure"]

MISSING_MATPLOTLIB = "matplotlib is not installed (pip install 'lightning-regs[plots]')"


def can_plot() -> bool:
    """Whether matplotlib can be imported (the base install does not include it: it is the ``plots`` extra).

    Example::

        >>> isinstance(can_plot(), bool)
        True
    """
    return importlib.util.find_spec("matplotlib") is not None


def plot_curves(
    steps: Sequence[int],
    curves: Mapping[str, Sequence[float]],
    ylabel: str,
    title: str = "",
    ylog: bool = False,
    errors: Mapping[str, Sequence[float]] | None = None,
) -> Any:
    """A matplotlib ``Figure`` of each curve against ``steps`` (symmetric-log x axis, so step 0 shows).

    ``errors[name]`` (standard errors) draws a band of ±1 error around curve ``name``.

    Example::

        >>> fig = plot_curves([0, 1, 10, 100], {"lc/train": [1.0, 2.0, 3.0, 1.0]}, ylabel="LC",
        ...                   errors={"lc/train": [0.1, 0.2, 0.1, 0.1]})
        >>> type(fig).__name__
        'Figure'
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(f"Plots need matplotlib: {MISSING_MATPLOTLIB}.") from error
    figure = Figure(figsize=(6, 3.6), dpi=100)
    axes = figure.subplots()
    errors = errors or {}
    for label, values in curves.items():
        x = list(steps)[: len(values)]
        (line,) = axes.plot(x, list(values), marker=".", label=label)
        spread = list(errors.get(label, []))
        if len(spread) == len(values):  # a curve measured before its errors were logged gets none
            low = [value - error for value, error in zip(values, spread, strict=True)]
            high = [value + error for value, error in zip(values, spread, strict=True)]
            axes.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    axes.set_xscale("symlog", linthresh=1)
    if ylog:
        axes.set_yscale("log")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def plot_directory(trainer: pl.Trainer) -> Path:
    """Where PNG plots go. Call on every rank: ``trainer.log_dir`` is a collective under DDP."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def publish_figure(
    trainer: pl.Trainer, figure: Any, name: str, directory: Path, step: int | None = None
) -> Path | None:
    """Send ``figure`` to W&B when a logger is a ``WandbLogger``; otherwise write ``<directory>/<name>.png``.

    Returns the PNG's path, or ``None`` when the figure went to W&B. Call on global rank zero only.
    """
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            logger.experiment.log({name: wandb.Image(figure), "trainer/global_step": step or trainer.global_step})
            return None
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name.replace('/', '_')}.png"
    partial = path.with_suffix(".png.partial")
    figure.savefig(partial, format="png")
    partial.replace(path)
    return path
