"""Experimental activation modules and a helper that swaps them into an existing model.

:class:`CRReLU` is the activation of Sun et al., "A Method on Searching Better Activation Functions"
(arXiv 2405.12954): ``ReLU(x) + ε·x·exp(−x²/2)`` with one learnable scalar ``ε`` per module.
:func:`replace_activations` puts it (or any other activation) in place of a model's ``nn.ReLU`` modules.

Example::

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(inplace=True), nn.Linear(8, 2))
    >>> replace_activations(net)
    2
    >>> net[1]
    CRReLU(eps=0.01, learnable=True)
    >>> [name for name, _ in net.named_parameters() if name.endswith("eps")]
    ['1.eps', '3.eps']
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from lightning_regs.functional.activations import crrelu

__all__ = ["CRReLU", "replace_activations"]


class CRReLU(nn.Module):
    """``CRReLU(x) = ReLU(x) + ε·x·exp(−x²/2)``, with ``ε`` one scalar per module (Sun et al., 2024).

    ``ε = 0`` is ReLU exactly; the paper initializes ``ε`` at 0.01 and learns it with the network's
    weights. The state dict holds one entry, ``eps`` (a parameter, or a buffer when ``learnable=False``),
    so a model keeps the same keys whether ``ε`` trains or not. ``eps`` has shape ``(1,)``, not ``()``:
    FSDP2's ``fully_shard`` refuses 0-dim parameters. ``forward`` uses it as a 0-dim view, so a bfloat16
    input still gives a bfloat16 output.

    Args:
        eps: the initial ``ε`` (finite).
        learnable: ``True``: ``ε`` is an ``nn.Parameter`` trained by the optimizer (weight decay, when the
            optimizer applies it to every parameter, pulls it towards 0, i.e. towards ReLU). ``False``: a
            fixed buffer.

    Raises:
        TypeError: if ``eps`` is not a real number.
        ValueError: if ``eps`` is not finite.

    Example::

        >>> import torch
        >>> act = CRReLU()
        >>> act
        CRReLU(eps=0.01, learnable=True)
        >>> act(torch.tensor([-3.0, 0.0, 3.0])).shape
        torch.Size([3])
        >>> torch.equal(CRReLU(eps=0.0)(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0]))
        True
    """

    def __init__(self, eps: float = 0.01, learnable: bool = True) -> None:
        super().__init__()
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
            raise TypeError(f"CRReLU's eps must be a real number such as 0.01, got {eps!r}.")
        if not math.isfinite(eps):
            raise ValueError(f"CRReLU's eps must be finite (the paper starts it at 0.01), got {eps}.")
        value = torch.tensor([float(eps)])  # shape (1,): fully_shard shards dim 0 and refuses 0-dim parameters
        self.learnable = bool(learnable)
        if self.learnable:
            self.eps = nn.Parameter(value)
        else:
            self.register_buffer("eps", value)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return crrelu(x, self.eps.reshape(()))  # 0-dim: the result keeps x's dtype

    @override
    def extra_repr(self) -> str:
        eps = self.eps.detach()
        if eps.is_meta:  # deferred initialization: no value yet
            value = "<meta>"
        elif type(eps) is not torch.Tensor:  # a sharded DTensor (FSDP2): reading it would need a collective
            value = f"<{type(eps).__name__}>"
        else:
            value = f"{eps.item():.4g}"
        return f"eps={value}, learnable={self.learnable}"


def _types(old: Any) -> tuple[type[nn.Module], ...]:
    types = tuple(old) if isinstance(old, (tuple, list)) else (old,)
    bad = [t for t in types if not (isinstance(t, type) and issubclass(t, nn.Module))]
    if not types or bad:
        raise TypeError(
            "replace_activations' `old` must be an nn.Module subclass or a tuple of them, such as nn.ReLU or "
            f"(nn.ReLU, nn.GELU); got {old!r}."
        )
    return types


def _check_factory(new: Any) -> None:
    if isinstance(new, nn.Module):
        raise TypeError(
            f"replace_activations' `new` must build a fresh module per replacement: pass the class "
            f"({type(new).__name__}) and its arguments as keywords, not an instance ({new!r})."
        )
    if isinstance(new, type) and not issubclass(new, nn.Module):
        raise TypeError(f"replace_activations' `new` must be an nn.Module class or factory; {new.__name__} is not one.")
    if not callable(new):
        raise TypeError(
            f"replace_activations' `new` must be an nn.Module class or a function returning one, got {new!r}."
        )


def replace_activations(
    model: nn.Module,
    old: type[nn.Module] | tuple[type[nn.Module], ...] = (nn.ReLU,),
    new: Callable[..., nn.Module] = CRReLU,
    **kwargs: Any,
) -> int:
    """Replace, in place and at any depth, every module of the types ``old`` by a fresh ``new(**kwargs)``.

    Matching is by ``isinstance`` (so ``nn.ReLU(inplace=True)`` is matched like ``nn.ReLU()``, and subclasses
    of ``old`` too). Activations applied functionally inside a ``forward`` (``F.relu(x)``, ``x.relu_()``) are
    not modules and cannot be replaced; nor can ``model`` itself.

    **Sharing is kept.** One module reused in several places stays one: each distinct matching module gets
    one replacement, put everywhere the original was registered. torchvision's ResNet ``BasicBlock`` and
    ``Bottleneck`` call their single ``self.relu`` two or three times in ``forward``; after replacement those
    calls share one :class:`CRReLU` and one ``ε`` (torchvision's ``resnet18`` gets 9: the stem's and one per
    block). The return value is the number of modules replaced, which with :class:`CRReLU` is the number of
    new ``ε`` parameters.

    **State dict.** Every existing key keeps its name and value; the only new keys are the replacements' own
    (``layer1.0.relu.eps`` with :class:`CRReLU`). A checkpoint of the original model loads with
    ``load_state_dict(state, strict=False)``, whose ``missing_keys`` are exactly the new ``eps`` entries.

    Args:
        model: the model to change in place.
        old: the activation class, or a tuple of classes, to replace.
        new: an ``nn.Module`` class or a function that returns a new module on each call.
        **kwargs: passed to every ``new(...)`` call (``eps=0.0`` for ``CRReLU``, for instance).

    Returns:
        The number of distinct modules replaced (at least 1).

    Raises:
        TypeError: for an ``old`` that is not an ``nn.Module`` class or a tuple of them, a ``new`` that is an
            instance or does not return an ``nn.Module``, or a ``model`` that is itself of type ``old``.
        ValueError: if ``model`` holds no module of the types ``old`` (the message names the types searched
            for and the parameter-free module types the model does hold). Nothing is changed then.

    Example::

        >>> from torchvision.models import resnet18
        >>> net = resnet18(num_classes=10)
        >>> replace_activations(net, nn.ReLU, CRReLU, eps=0.01)
        9
        >>> net.layer1[0].relu
        CRReLU(eps=0.01, learnable=True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"replace_activations needs an nn.Module, got {type(model).__name__}.")
    types = _types(old)
    _check_factory(new)
    searched = ", ".join(t.__name__ for t in types)
    if isinstance(model, types):
        raise TypeError(
            f"The model is itself a {type(model).__name__}: replace_activations replaces submodules in place. "
            "Build the new activation directly (e.g. CRReLU())."
        )

    # Every registration (parent path, attribute name) of a matching module, shared ones included
    # (remove_duplicate=False), outermost first; a match inside a matched module goes with its parent.
    matched: list[str] = []
    sites: list[tuple[str, str, nn.Module]] = []
    for path, module in model.named_modules(remove_duplicate=False):
        if not path or not isinstance(module, types) or any(path.startswith(f"{p}.") for p in matched):
            continue
        matched.append(path)
        parent, _, name = path.rpartition(".")
        sites.append((parent, name, module))
    if not sites:
        raise ValueError(
            f"replace_activations found no {searched} module in {type(model).__name__}, so nothing was replaced. "
            f"Its parameter-free leaf modules are: {_parameter_free_leaves(model)}. Pass `old=` with the "
            "activation classes the model uses; activations applied functionally in forward (F.relu) cannot be "
            "replaced."
        )

    replacements: dict[int, nn.Module] = {}
    for _, _, module in sites:
        if id(module) not in replacements:
            made = new(**kwargs)
            if not isinstance(made, nn.Module):
                raise TypeError(
                    f"replace_activations' `new` returned a {type(made).__name__}, not an nn.Module: pass an "
                    "nn.Module class or a function that returns a new module."
                )
            replacements[id(module)] = made
    for parent, name, module in sites:
        setattr(model.get_submodule(parent), name, replacements[id(module)])
    return len(replacements)


def _parameter_free_leaves(model: nn.Module) -> str:
    names = {
        type(m).__name__
        for m in model.modules()
        if next(m.children(), None) is None and next(m.parameters(recurse=False), None) is None
    }
    return ", ".join(sorted(names)) or "none"
