"""Layered views of timm's common families: ResNet, ConvNeXt, VisionTransformer (ViT, DeiT) and EfficientNet.

:func:`lightning_regs.models.layered` imports this module only for a model whose class comes from timm, so timm
stays optional (it is imported here inside functions, never at import time). A view cuts at the blocks and names
each layer by its module path with ``_`` for ``.`` (``layer1_0``, ``stages_1_blocks_0``, ``blocks_3``); the stem,
the blocks and the head are the model's own modules (nothing is copied), called in the order of the model's
``forward_features``. The parts of a forward that timm writes as methods of the model (ViT's position embedding,
every family's ``forward_head`` with its dropout) are called on the model itself, so the view computes exactly
what ``model(x)`` computes, in this timm version too.

Example::

    >>> import pytest
    >>> timm = pytest.importorskip("timm")
    >>> import torch
    >>> net = timm.create_model("resnet18", num_classes=10).eval()
    >>> entries, head = timm_adapter(net)(net)
    >>> [name for name, _ in entries][:3], type(head).__name__
    (['stem', 'layer1_0', 'layer1_1'], 'TimmHead')
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

import torch
from torch import nn
from typing_extensions import override

__all__ = ["TimmHead", "TimmViTEmbedding", "is_timm_model", "timm_adapter"]

Entries = list[tuple[str, nn.Module]]
Adapter = Callable[[nn.Module], tuple[Entries, nn.Module]]

# What the views support, in the words of the error messages.
TIMM_FAMILIES = "timm ResNet, ConvNeXt, VisionTransformer (ViT, DeiT) and EfficientNet"


def is_timm_model(model: nn.Module) -> bool:
    """Whether ``model``'s class (or a base of it) is defined in timm; reads class names, imports nothing.

    Example::

        >>> is_timm_model(nn.Linear(2, 2))
        False
    """
    return any(cls.__module__.split(".")[0] == "timm" for cls in type(model).__mro__)


class _OwnerPart(nn.Module):
    """A piece of ``owner``'s forward that calls the owner's own methods, registering the modules it uses.

    The owner is held in a tuple, so it is not registered twice. timm's methods read the owner's own
    ``training`` flag (``forward_head``'s dropout, DeiT's two heads), which ``view.eval()`` does not reach: while
    a method runs, the flag is the one of the model's modules this part registers, which every ``train()``/
    ``eval()`` of the view, of the module that trains the model, or of ``eval_mode`` sets; then it is restored.
    """

    summarize_children = True  # print(layered(model)) names the types of the modules it calls

    def __init__(self, owner: nn.Module, children: Iterable[str], parameters: Iterable[str] = ()) -> None:
        super().__init__()
        self._owner = (owner,)
        for name in children:
            self.add_module(name, getattr(owner, name))
        for name in parameters:
            self.register_parameter(name, getattr(owner, name))
        if next(self.children(), None) is None:
            raise ValueError(f"A part of {type(owner).__name__}'s forward needs one of its modules; got none.")

    @property
    def owner(self) -> nn.Module:
        return self._owner[0]

    def _call(self, method: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``method(x)`` with the owner's ``training`` flag set to its modules' mode."""
        owner = self.owner
        saved, owner.training = owner.training, next(self.children()).training
        try:
            return method(x)
        finally:
            owner.training = saved


class TimmViTEmbedding(_OwnerPart):
    """A timm VisionTransformer's input side: ``patch_embed``, ``_pos_embed`` (class/register tokens, positions),
    ``patch_drop`` and ``norm_pre``, as its ``forward_features`` runs them."""

    def __init__(self, owner: nn.Module) -> None:
        names = ("patch_embed", "pos_drop", "patch_drop", "norm_pre")
        super().__init__(owner, names, [name for name, _ in owner.named_parameters(recurse=False)])

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owner = self.owner
        x = self._call(owner._pos_embed, owner.patch_embed(x))
        return owner.norm_pre(owner.patch_drop(x))


class TimmHead(_OwnerPart):
    """``owner.forward_head(x)`` (pooling, dropout, classifier), after ``owner.<pre>`` when given (ViT's ``norm``).

    It registers every child of the owner that the layers do not hold, so each parameter is shared once.
    """

    def __init__(self, owner: nn.Module, children: Iterable[str], pre: str | None = None) -> None:
        super().__init__(owner, children)
        self.pre = pre

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre is not None:
            x = getattr(self.owner, self.pre)(x)
        return self._call(self.owner.forward_head, x)


def _rest(model: nn.Module, used: Iterable[str]) -> list[str]:
    used = set(used)
    return [name for name, _ in model.named_children() if name not in used]


def _resnet(model: nn.Module) -> tuple[Entries, nn.Module]:
    stem_names = ("conv1", "bn1", "act1", "maxpool")
    stem = nn.Sequential(OrderedDict((name, getattr(model, name)) for name in stem_names))
    stages = [f"layer{i}" for i in range(1, 5)]
    blocks = [(f"{stage}_{j}", block) for stage in stages for j, block in getattr(model, stage).named_children()]
    return [("stem", stem), *blocks], TimmHead(model, _rest(model, [*stem_names, *stages]))


def _convnext(model: nn.Module) -> tuple[Entries, nn.Module]:
    from timm.models.convnext import ConvNeXtStage

    entries: Entries = [("stem", model.stem)]
    for i, stage in model.stages.named_children():
        if type(stage).forward is not ConvNeXtStage.forward:  # an unknown stage: one layer, run as it is
            entries.append((f"stages_{i}", stage))
            continue
        if not isinstance(stage.downsample, nn.Identity):
            entries.append((f"stages_{i}_downsample", stage.downsample))
        entries += [(f"stages_{i}_blocks_{j}", block) for j, block in stage.blocks.named_children()]
    return entries, TimmHead(model, _rest(model, ["stem", "stages"]), pre="norm_pre")


def _vit(model: nn.Module) -> tuple[Entries, nn.Module]:
    embedding = TimmViTEmbedding(model)
    blocks = [(f"blocks_{i}", block) for i, block in model.blocks.named_children()]
    used = [*(name for name, _ in embedding.named_children()), "blocks"]
    return [("embedding", embedding), *blocks], TimmHead(model, _rest(model, used), pre="norm")


def _efficientnet(model: nn.Module) -> tuple[Entries, nn.Module]:
    stem = nn.Sequential(OrderedDict(conv_stem=model.conv_stem, bn1=model.bn1))
    blocks = [
        (f"blocks_{i}_{j}", block) for i, stage in model.blocks.named_children() for j, block in stage.named_children()
    ]
    conv_head = nn.Sequential(OrderedDict(conv_head=model.conv_head, bn2=model.bn2))
    used = ["conv_stem", "bn1", "blocks", "conv_head", "bn2"]
    return [("stem", stem), *blocks, ("conv_head", conv_head)], TimmHead(model, _rest(model, used))


def _families() -> dict[type[nn.Module], Adapter]:
    from timm.models.convnext import ConvNeXt
    from timm.models.efficientnet import EfficientNet
    from timm.models.resnet import ResNet
    from timm.models.vision_transformer import VisionTransformer

    return {ResNet: _resnet, ConvNeXt: _convnext, VisionTransformer: _vit, EfficientNet: _efficientnet}


def timm_adapter(model: nn.Module) -> Adapter | None:
    """The adapter ``model -> (entries, head)`` for a timm model of a known family, or None for another family.

    A subclass that overrides ``forward`` or ``forward_features`` is refused: its blocks may not run as the
    family's do, so a view could compute something else than ``model(x)``. ``forward_head`` and ViT's
    ``_pos_embed`` may be overridden (DeiT's distilled models do): the view calls the model's own.

    Raises:
        TypeError: a known family whose ``forward``/``forward_features`` the model's class overrides.

    Example::

        >>> import pytest
        >>> timm = pytest.importorskip("timm")
        >>> timm_adapter(timm.create_model("convnext_atto")).__name__
        '_convnext'
    """
    for family, adapt in _families().items():
        if not isinstance(model, family):
            continue
        for method in ("forward", "forward_features"):
            if getattr(type(model), method) is not getattr(family, method):
                raise TypeError(
                    f"layered() splits timm {family.__name__} models along their forward_features, and "
                    f"{type(model).__name__} overrides {method}, so its blocks may not run as a {family.__name__}'s "
                    "do. Wrap it by hand as `LayeredModel(layers=[(name, module), ...], head=head, num_classes=C)` "
                    "so that forward(x) == head(layers(x))."
                )
        return adapt
    return None
