"""Figures of ``benchmarks/grokking_lc_digits.py``: LC, accuracies, PGD, the LLC and the information plane on one
time axis (log of the optimizer step), for one seed or every seed, and the information plane of one seed.

The rows are the script's history rows: ``step``, ``train``/``heldout``/``random`` (LC), ``train_acc``,
``heldout_acc``, ``robust_eps<ε>`` (PGD accuracy), ``llc``/``llc_se`` and ``ip/<layer>/ixt``/``ip/<layer>/ity``
(bits, training probe; ``ip/<layer>@heldout/...`` for the held-out probe) with ``_se``.

Example::

    >>> rows = [{"step": s, "train": 1.0, "heldout": 1.0, "random": 1.0, "llc": 0.5, "llc_se": 0.1,
    ...          "ip/fc1/ixt": 9.0, "ip/fc1/ity": 3.0} for s in (0, 10, 100)]
    >>> ip_layers(rows)
    ['fc1']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SETS = ("train", "heldout", "random")
Rows = list[dict[str, float]]


def ip_layers(rows: Rows) -> list[str]:
    """The layers with information-plane values on the training probe, in the order they were logged."""
    return [key[3:-4] for key in rows[0] if key.startswith("ip/") and key.endswith("/ixt") and "@" not in key]


def _steps(rows: Rows) -> list[float]:
    return [row["step"] + 1 for row in rows]


def _time_axis(axes: Any, label: str) -> None:
    axes.set_xscale("log")
    axes.set_ylabel(label)
    axes.grid(alpha=0.3)


def draw(rows: Rows, robust_keys: list[str], title: str, path: Path) -> None:
    """One seed: LC per set with the accuracies (top), then λ̂ and the information plane's two coordinates per layer
    when measured, all against log(step + 1)."""
    from matplotlib.figure import Figure

    with_llc, layers = "llc" in rows[0], ip_layers(rows)
    heights = [3.0] + [2.0] * with_llc + [2.2] * bool(layers)
    figure = Figure(figsize=(7.5, 3.0 + 1.6 * len(heights)), dpi=100)
    panels = figure.subplots(len(heights), 1, sharex=True, height_ratios=heights, squeeze=False)[:, 0]
    lc_axes = panels[0]
    for name in SETS:
        lc_axes.plot(_steps(rows), [row[name] for row in rows], ".-", label=f"LC {name}")
    _time_axis(lc_axes, "local complexity (neurons)")
    acc_axes = lc_axes.twinx()
    styles = [("train_acc", "k--", "train acc"), ("heldout_acc", "k:", "held-out acc")]
    styles += [(key, f"C{3 + i}-.", f"PGD acc {key.removeprefix('robust_')}") for i, key in enumerate(robust_keys)]
    for key, style, label in styles:
        acc_axes.plot(_steps(rows), [row.get(key, float("nan")) for row in rows], style, label=label)
    acc_axes.set_ylabel("accuracy")
    acc_axes.set_ylim(0, 1.02)
    handles, labels = lc_axes.get_legend_handles_labels()
    more_handles, more_labels = acc_axes.get_legend_handles_labels()
    lc_axes.legend(handles + more_handles, labels + more_labels, fontsize="x-small", loc="center left", ncol=2)
    lc_axes.set_title(title, fontsize="small")
    rest = list(panels[1:])
    if with_llc:
        draw_llc(rest.pop(0), {"": rows})
    if layers:
        draw_information(rest.pop(0), rows, layers)
    panels[-1].set_xlabel("optimizer step + 1")
    figure.tight_layout()
    save(figure, path)


def draw_llc(axes: Any, per_seed: dict[Any, Rows]) -> None:
    """λ̂ against log(step + 1), a band of ±1 standard error over chains, one line per seed."""
    for index, (seed, rows) in enumerate(per_seed.items()):
        llc, error = [row["llc"] for row in rows], [row["llc_se"] for row in rows]
        label = f"seed {seed}" if seed != "" else "LLC"
        axes.plot(_steps(rows), llc, ".-", color=f"C{index}", markersize=3, label=label)
        low = [v - e for v, e in zip(llc, error, strict=True)]
        high = [v + e for v, e in zip(llc, error, strict=True)]
        axes.fill_between(_steps(rows), low, high, color=f"C{index}", alpha=0.2, linewidth=0)
    axes.set_yscale("symlog", linthresh=0.1)  # early λ̂ is hugely negative (w* on a slope); the late values are small
    axes.axhline(0.0, color="k", linewidth=0.5)
    _time_axis(axes, "λ̂ (LLC), symlog")


def draw_information(axes: Any, rows: Rows, layers: list[str], color_by_layer: bool = True, color: str = "C0") -> None:
    """``I(X;T)`` (solid) and ``I(T;Y)`` (dashed, right axis) of each layer against log(step + 1)."""
    right = getattr(axes, "_ity_twin", None) or axes.twinx()
    axes._ity_twin = right  # several seeds share one twin
    for index, layer in enumerate(layers):
        shade = f"C{index}" if color_by_layer else color
        label = layer if color_by_layer else None
        axes.plot(_steps(rows), [row[f"ip/{layer}/ixt"] for row in rows], "-", color=shade, label=label)
        right.plot(_steps(rows), [row[f"ip/{layer}/ity"] for row in rows], "--", color=shade)
    _time_axis(axes, "I(X;T) bits (solid)")
    right.set_ylabel("I(T;Y) bits (dashed)")
    if color_by_layer:
        axes.legend(fontsize="x-small", loc="lower right", title="layer", title_fontsize="x-small")


def draw_seeds(per_seed: dict[int, Rows], robust_key: str | None, title: str, path: Path) -> None:
    """Every seed: LC on training points, held-out / PGD accuracy, λ̂, and the last measured layer's information
    plane coordinates, against log(step + 1)."""
    from matplotlib.figure import Figure

    first = next(iter(per_seed.values()))
    with_llc, layers = all("llc" in rows[0] for rows in per_seed.values()), ip_layers(first)
    count = 2 + with_llc + bool(layers)
    figure = Figure(figsize=(7.5, 2.4 + 2.2 * count), dpi=100)
    panels = list(figure.subplots(count, 1, sharex=True, squeeze=False)[:, 0])
    lc_axes, acc_axes = panels[0], panels[1]
    for index, (seed, rows) in enumerate(per_seed.items()):
        color = f"C{index}"
        lc_axes.plot(
            _steps(rows), [row["train"] for row in rows], ".-", color=color, markersize=3, label=f"seed {seed}"
        )
        acc_axes.plot(_steps(rows), [row.get("heldout_acc", float("nan")) for row in rows], ":", color=color)
        if robust_key is not None:
            acc_axes.plot(_steps(rows), [row.get(robust_key, float("nan")) for row in rows], "-", color=color)
        if layers:
            draw_information(panels[-1], rows, layers[-1:], color_by_layer=False, color=color)
    _time_axis(lc_axes, "LC, training points")
    lc_axes.legend(fontsize="small", ncol=len(per_seed))
    lc_axes.set_title(title, fontsize="small")
    _time_axis(acc_axes, "accuracy")
    acc_axes.set_ylim(0, 1.02)
    caption = "dotted: held-out accuracy" + (
        f"; solid: PGD accuracy ({robust_key.removeprefix('robust_')})" if robust_key else ""
    )
    acc_axes.set_title(caption, fontsize="small")
    if with_llc:
        draw_llc(panels[2], per_seed)
    if layers:
        panels[-1].set_title(f"information plane coordinates of layer {layers[-1]} (training probe)", fontsize="small")
    panels[-1].set_xlabel("optimizer step + 1")
    figure.tight_layout()
    save(figure, path)


def draw_plane(rows: Rows, title: str, path: Path) -> None:
    """One seed's information plane: ``I(T;Y)`` against ``I(X;T)`` per layer, the points coloured by the step."""
    from lightning_regs.callbacks._information_plane_plot import information_plane_figure

    layers = ip_layers(rows)
    curves = {
        layer: ([row[f"ip/{layer}/ixt"] for row in rows], [row[f"ip/{layer}/ity"] for row in rows]) for layer in layers
    }
    figure = information_plane_figure([int(row["step"]) for row in rows], curves, title=title)
    save(figure, path)


def save(figure: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
