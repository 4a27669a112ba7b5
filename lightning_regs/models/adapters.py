"""Layered views of common architectures: :func:`layered` re-expresses a model as ``head(layers(x))``.

The view shares the original's modules and parameters (nothing is copied), so training either trains
both, and ``layered(model)(x)`` equals ``model(x)``.

Example::

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    >>> view = layered(net)
    >>> view.layer_names, view.num_classes
    (('0-1',), 4)
    >>> x = torch.randn(2, 3, 8, 8)
    >>> torch.equal(view(x), net(x))
    True
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.pooling import _AdaptiveAvgPoolNd, _AdaptiveMaxPoolNd
from torchvision.models import VGG, ConvNeXt, ResNet, VisionTransformer
from torchvision.models.convnext import CNBlock
from typing_extensions import override

from lightning_regs._compat import NormBase, compiled_original
from lightning_regs.models.layered import SUPPORTED_FAMILIES, LayeredModel
from lightning_regs.models.timm_adapters import is_timm_model, timm_adapter  # imports timm only when called

__all__ = ["layered"]

Entries = list[tuple[str, nn.Module]]

# BatchNorm*, SyncBatchNorm and InstanceNorm* derive from _NormBase.
_NORMS = (NormBase, nn.LayerNorm, nn.GroupNorm)
# What a Sequential's classifier may start with in front of its final Linear.
_HEAD_PREFIX = (nn.Flatten, _AdaptiveAvgPoolNd, _AdaptiveMaxPoolNd)


def _starts_entry(module: nn.Module) -> bool:
    # Activations with learnable shape parameters (PReLU, CRReLU's ε) belong to the layer before them, as norms do.
    if isinstance(module, _NORMS) or _is_parametric_activation(module):
        return False
    return next(module.parameters(), None) is not None


def _is_parametric_activation(module: nn.Module) -> bool:
    from lightning_regs.models.activations import CRReLU  # the models package imports this module

    return isinstance(module, (nn.PReLU, CRReLU))


def _bounds(children: list[nn.Module]) -> list[int]:
    """Entry boundaries: an entry starts at each child with parameters that is not a norm or an activation."""
    starts = [i for i, child in enumerate(children) if _starts_entry(child)]
    return [0, *starts[1:], len(children)]


def _group(seq: nn.Sequential, bounds: list[int], prefix: str = "") -> Entries:
    """One entry per ``[a, b)`` child range: the child itself, or a Sequential named ``"a-(b-1)"``."""
    named = list(seq.named_children())
    entries = []
    for a, b in itertools.pairwise(bounds):
        part = named[a:b]
        name = part[0][0] if len(part) == 1 else f"{part[0][0]}-{part[-1][0]}"
        entries.append((prefix + name, part[0][1] if len(part) == 1 else nn.Sequential(OrderedDict(part))))
    return entries


def _sequential(model: nn.Sequential) -> tuple[Entries, nn.Module]:
    children = list(model)
    if not children:
        raise ValueError("layered() needs a non-empty nn.Sequential.")
    bounds = _bounds(children)
    if len(bounds) == 2 or not isinstance(children[-1], nn.Linear):
        return _group(model, bounds), nn.Identity()
    head_start = bounds[-2]
    # The previous entry holds a child with parameters, so this never empties it.
    while isinstance(children[head_start - 1], _HEAD_PREFIX):
        head_start -= 1
    head = nn.Sequential(OrderedDict(list(model.named_children())[head_start:]))
    return _group(model, [*bounds[:-2], head_start]), head


def _flat(parent: str, seq: nn.Sequential) -> Entries:
    return [(f"{parent}_{name}", child) for name, child in seq.named_children()]


def _resnet(model: ResNet) -> tuple[Entries, nn.Module]:
    stem = nn.Sequential(OrderedDict(conv1=model.conv1, bn1=model.bn1, relu=model.relu, maxpool=model.maxpool))
    blocks = [entry for i in range(1, 5) for entry in _flat(f"layer{i}", getattr(model, f"layer{i}"))]
    head = nn.Sequential(OrderedDict(avgpool=model.avgpool, flatten=nn.Flatten(1), fc=model.fc))
    return [("stem", stem), *blocks], head


def _vgg(model: VGG) -> tuple[Entries, nn.Module]:
    entries = _group(model.features, _bounds(list(model.features)), prefix="features_")
    head = nn.Sequential(OrderedDict(avgpool=model.avgpool, flatten=nn.Flatten(1), classifier=model.classifier))
    return entries, head


def _convnext(model: ConvNeXt) -> tuple[Entries, nn.Module]:
    entries: Entries = []
    for name, part in model.features.named_children():
        is_stage = all(isinstance(block, CNBlock) for block in part)
        entries += _flat(f"features_{name}", part) if is_stage else [(f"features_{name}", part)]
    return entries, nn.Sequential(OrderedDict(avgpool=model.avgpool, classifier=model.classifier))


class _ViTEmbedding(nn.Module):
    """VisionTransformer's input side: patchify, prepend the class token, add positions, dropout."""

    summarize_children = True  # print(layered(model)) names the types of its modules

    def __init__(self, model: VisionTransformer) -> None:
        super().__init__()
        self.conv_proj = model.conv_proj
        self.class_token = model.class_token
        self.pos_embedding = model.encoder.pos_embedding
        self.dropout = model.encoder.dropout

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


class _ClassToken(nn.Module):
    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def _vit(model: VisionTransformer) -> tuple[Entries, nn.Module]:
    entries = [("embedding", _ViTEmbedding(model)), *model.encoder.layers.named_children()]
    head = nn.Sequential(OrderedDict(ln=model.encoder.ln, token=_ClassToken(), heads=model.heads))
    return entries, head


_FAMILIES: dict[type[nn.Module], Callable[..., tuple[Entries, nn.Module]]] = {
    nn.Sequential: _sequential,
    ResNet: _resnet,
    VGG: _vgg,
    ConvNeXt: _convnext,
    VisionTransformer: _vit,
}


def layered(model: nn.Module, num_classes: int | None = None) -> nn.Module:
    """A view of ``model`` that follows the layer-sequence contract ``forward(x) == head(layers(x))``.

    The view registers the original's own modules and parameters (no copies), so ``layered(model)(x)``
    equals ``model(x)`` and optimizing one optimizes the other. Understood:

    * a model that already has ``layers`` (an :class:`~torch.nn.Sequential`) and ``head``: returned as is;
    * a ``torch.compile``\\ d model: its original module is adapted;
    * :class:`~torch.nn.Sequential`: an entry starts at each child with parameters that is not a
      normalization layer, so a Conv/Linear keeps its norm, activation, pooling and dropout; entries are
      named by their child range (``"0-2"``). A final ``Linear`` (with the ``Flatten``/adaptive pooling right
      before it) becomes the head;
    * torchvision ResNet (``stem``, ``layer1_0``, ..., ``layer4_1``), VGG (``features`` grouped as a
      Sequential), ConvNeXt (``features_0``, each block ``features_1_0``, ..., each downsampling layer) and
      VisionTransformer (``embedding``, ``encoder_layer_0``, ...);
    * timm (``pip install ".[timm]"``; see :mod:`lightning_regs.models.timm_adapters`) ResNet (``stem``,
      ``layer1_0``, ...), ConvNeXt (``stem``, ``stages_0_blocks_0``, ..., ``stages_1_downsample``, ...),
      VisionTransformer, DeiT included (``embedding``, ``blocks_0``, ...), and EfficientNet (``stem``,
      ``blocks_0_0``, ..., ``conv_head``); ``num_classes`` is the model's own.

    Args:
        model: the model to adapt.
        num_classes: the number of logits; by default the ``out_features`` of the model's last ``Linear``.

    Raises:
        TypeError: a model of another kind, with how to wrap it by hand.
        ValueError: an empty Sequential, or no ``num_classes`` given and no ``Linear`` to read it from.

    Example::

        >>> import torch
        >>> from torchvision.models import resnet18
        >>> net = resnet18(num_classes=10).eval()
        >>> view = layered(net)
        >>> view.layer_names[:3], view.num_classes
        (('stem', 'layer1_0', 'layer1_1'), 10)
        >>> x = torch.randn(1, 3, 32, 32)
        >>> torch.equal(view(x), net(x))
        True
    """
    model = compiled_original(model)
    if isinstance(getattr(model, "layers", None), nn.Sequential) and isinstance(
        getattr(model, "head", None), nn.Module
    ):
        return model
    adapt = next((fn for kind, fn in _FAMILIES.items() if isinstance(model, kind)), None)
    if adapt is None and is_timm_model(model):
        adapt = timm_adapter(model)
    if adapt is None or (isinstance(model, nn.Sequential) and type(model).forward is not nn.Sequential.forward):
        raise TypeError(
            f"layered() does not know how to split {type(model).__name__} into layers; it understands "
            f"{SUPPORTED_FAMILIES}, and models that already have `layers` (an nn.Sequential) and `head`. Wrap "
            "yours by hand as `LayeredModel(layers=[(name, module), ...], head=head, num_classes=C)` so that "
            "forward(x) == head(layers(x))."
        )
    entries, head = adapt(model)
    own = getattr(model, "num_classes", None)  # timm models say it
    if num_classes is None and isinstance(own, int) and not isinstance(own, bool) and own > 0:
        num_classes = own
    if num_classes is None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{type(model).__name__} has no nn.Linear to read num_classes from: pass num_classes.")
        num_classes = linears[-1].out_features
    return LayeredModel(entries, head, num_classes)
