"""Which layers a representation monitor reads: named modules, the classifier's input, or every activation module."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lightning_regs.callbacks._features import FeatureTap, chunked_features, find_classifier
from lightning_regs.models.activations import CRReLU

__all__ = ["ACTIVATIONS", "PENULTIMATE", "layer_tap", "measured_layers"]

PENULTIMATE = "penultimate"
#: The modules whose outputs are measured by default: the ReLU family and Tanh.
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, CRReLU, nn.Tanh,
)  # fmt: skip


def layer_tap(model: nn.Module, layer: str, owner: str) -> FeatureTap:
    """A tap on ``layer``'s output, or on the classifier's input for ``"penultimate"``; ``owner`` names the caller.

    Example::

        >>> layer_tap(nn.Sequential(nn.Linear(2, 3), nn.ReLU()), "1", "Monitor").module
        ReLU()
    """
    if layer == PENULTIMATE:
        return FeatureTap(PENULTIMATE, find_classifier(model)[1], "input")
    try:
        return FeatureTap(layer, model.get_submodule(layer), "output")
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name][:20]
        raise ValueError(
            f"{owner}(layers=[..., {layer!r}]): {type(model).__name__} has no such module; its modules include "
            f"{names} (or use 'penultimate')."
        ) from None


def measured_layers(
    model: nn.Module, image: torch.Tensor, device: torch.device, layers: Sequence[str] | None, owner: str
) -> tuple[list[str], list[int]]:
    """The names and widths (features per image) of ``layers``, read from one forward of ``image`` ``(1, ...)``.

    ``layers=None``: every :data:`ACTIVATIONS` module that runs exactly once per forward; one that runs more often
    (the ``relu`` a torchvision block calls twice) or never is left out with a warning. A named layer that does
    not run once is an error. Under FSDP2 every rank must call this (the forward gathers parameters).

    Example::

        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2), nn.ReLU())
        >>> measured_layers(net, torch.zeros(1, 2, 2), torch.device("cpu"), None, "Monitor")
        (['2', '4'], [3, 2])
    """
    if layers is not None:
        taps = [layer_tap(model, name, owner) for name in layers]
    else:
        taps = [FeatureTap(name, module) for name, module in model.named_modules() if isinstance(module, ACTIVATIONS)]
        if not taps:
            raise ValueError(
                f"{owner}(layers=None) measures the activation modules (ReLU family, Tanh), and {type(model).__name__} "
                "has none (a functional F.relu is not a module): name layers=[...] or 'penultimate'."
            )
    for _ in chunked_features(model, image, taps, 1, device):
        pass
    if layers is None:
        others = [f"{tap.name} ({tap.calls}×)" for tap in taps if tap.calls != 1]
        taps = [tap for tap in taps if tap.calls == 1]
        if others:
            rank_zero_warn(
                f"{owner}: left out the activation modules that do not run exactly once per forward "
                f"({', '.join(others)}): their outputs are not one layer. Name the layers with layers=[...]."
            )
        if not taps:
            raise ValueError(f"{owner}: no activation module runs once per forward; name layers=[...].")
    widths = [tap.take().shape[1] for tap in taps]  # take(): a named layer that did not run once is an error
    return [tap.name for tap in taps], widths
