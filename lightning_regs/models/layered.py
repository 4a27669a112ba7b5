"""The layer-sequence contract that local learning and the monitors split models along.

Every model in :mod:`lightning_regs.models` is a :class:`LayeredModel`::

    forward(x) == head(layers(x))

* ``layers`` is an :class:`torch.nn.Sequential` of the feature-extracting layers, in execution order,
  with named children (``stem``, ``s1b0``, ...). It is the unit a local-learning split cuts between:
  a split after layer ``i`` means layers ``0..i`` form one gradient-isolated module.
* ``head`` maps the output of the last layer to class logits (pooling, flattening, classifier).
* ``num_classes`` is the width of the logits.

Any user model that follows the same three attributes works everywhere a ``LayeredModel`` does.

Example::

    >>> import torch
    >>> from lightning_regs.models import SmallCNN, layer_sequence
    >>> model = SmallCNN(num_classes=10, in_channels=1)
    >>> layers = layer_sequence(model)
    >>> x = torch.zeros(2, 1, 8, 8)
    >>> torch.equal(model.head(layers(x)), model(x))
    True
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import nn
from typing_extensions import override

__all__ = ["SUPPORTED_FAMILIES", "LayeredModel", "layer_sequence"]

# The models lightning_regs.models.layered() adapts, in the words of the error messages.
SUPPORTED_FAMILIES = (
    "nn.Sequential (without a custom forward), torchvision ResNet, VGG, ConvNeXt and VisionTransformer, "
    "and timm ResNet, ConvNeXt, VisionTransformer (ViT, DeiT) and EfficientNet"
)
# How many child types a Sequential's summary line names before it counts the rest.
_SUMMARY_CHILDREN = 6


class LayeredModel(nn.Module):
    """A classifier written as ``head(layers(x))`` with ``layers`` an ordered, named sequence.

    Args:
        layers: ``(name, module)`` pairs in execution order, or a ready :class:`torch.nn.Sequential`.
        head: the module that turns the last layer's output into logits.
        num_classes: the number of logits ``head`` produces.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> model = LayeredModel([("fc1", nn.Linear(4, 8)), ("act1", nn.ReLU())], nn.Linear(8, 3), 3)
        >>> model(torch.zeros(5, 4)).shape
        torch.Size([5, 3])
        >>> model.layer_names
        ('fc1', 'act1')

    ``print(model)`` shows the cut points, one line per layer (index, name, module type), and the head; the
    whole module tree is ``print(model.layers)``::

        >>> print(model)
        LayeredModel(num_classes=3, 2 layers; a split cuts after any but the last, by index or name:
          (0) fc1: Linear
          (1) act1: ReLU
          head: Linear
        )
    """

    def __init__(
        self,
        layers: nn.Sequential | Iterable[tuple[str, nn.Module]],
        head: nn.Module,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.layers = layers if isinstance(layers, nn.Sequential) else nn.Sequential(OrderedDict(layers))
        self.head = head
        self.num_classes = int(num_classes)

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Names of the layers, in execution order."""
        return tuple(name for name, _ in self.layers.named_children())

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x))

    def __repr__(self) -> str:
        lines = [f"  ({i}) {name}: {_summary(layer)}" for i, (name, layer) in enumerate(self.layers.named_children())]
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, {len(lines)} layers; a split cuts after any but "
            "the last, by index or name:\n" + "\n".join([*lines, f"  head: {_summary(self.head)}"]) + "\n)"
        )


def _summary(module: nn.Module) -> str:
    """A module's type, and for a Sequential (or a part that says ``summarize_children``) its children's types
    without the Identities: ``Sequential(Conv2d, BatchNorm2d, ReLU)``."""
    name = type(module).__name__.lstrip("_")
    if type(module) is not nn.Sequential and not getattr(type(module), "summarize_children", False):
        return name
    kinds = [type(child).__name__.lstrip("_") for child in module.children() if not isinstance(child, nn.Identity)]
    if len(kinds) > _SUMMARY_CHILDREN:
        kinds = [*kinds[: _SUMMARY_CHILDREN - 1], f"... {len(kinds) - _SUMMARY_CHILDREN + 1} more"]
    return f"{name}({', '.join(kinds)})"


def layer_sequence(model: nn.Module) -> nn.Sequential:
    """Return ``model.layers`` after checking that ``model`` follows the layer-sequence contract.

    Raises:
        TypeError: naming what is missing and how to provide it, when ``model`` has no
            ``layers`` :class:`~torch.nn.Sequential` or no ``head`` module.

    Example::

        >>> from lightning_regs.models import MLP
        >>> len(layer_sequence(MLP(in_features=4, num_classes=2, width=8, depth=3)))
        2
    """
    layers = getattr(model, "layers", None)
    head = getattr(model, "head", None)
    if isinstance(layers, nn.Sequential) and isinstance(head, nn.Module):
        return layers
    missing = []
    if not isinstance(layers, nn.Sequential):
        missing.append(f"`layers` (an nn.Sequential of its layers in order; found {type(layers).__name__})")
    if not isinstance(head, nn.Module):
        missing.append(f"`head` (the module mapping the last layer's output to logits; found {type(head).__name__})")
    raise TypeError(
        f"{type(model).__name__} does not expose an ordered layer sequence: it lacks "
        + " and ".join(missing)
        + f". Adapt it with `lightning_regs.models.layered(model)` ({SUPPORTED_FAMILIES}), use a model from "
        "lightning_regs.models, wrap yours as "
        "`LayeredModel(layers=[('name', module), ...], head=head, num_classes=C)` so that "
        "forward(x) == head(layers(x)), or give it those two attributes."
    )
