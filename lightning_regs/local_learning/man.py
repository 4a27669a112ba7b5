"""Momentum auxiliary network (MAN, Su et al., ECCV 2024) in front of a DGL or InfoPro head."""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn
from typing_extensions import override

__all__ = ["ManInit", "ManUpdate", "MomentumAuxiliaryHead", "reinitialize"]

ManInit = Literal["copy", "random"]
ManUpdate = Literal["after_step", "before_step"]


def check_momentum(owner: str, momentum: float) -> None:
    """Refuse an EMA momentum that is not a finite number in [0, 1], naming ``owner`` and the paper's value.

    Example::

        >>> check_momentum("MomentumAuxiliaryHead", 0.995)
    """
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
        raise ValueError(
            f"{owner}: the MAN momentum must be a number in [0, 1] (0 copies the block every step, 1 freezes the EMA; "
            f"the paper uses 0.995); got {momentum!r}."
        )


def reinitialize(module: nn.Module) -> nn.Module:
    """Draw fresh weights for every submodule that has ``reset_parameters`` (from the global RNG); returns ``module``.

    Example::

        >>> block = nn.Linear(4, 4)
        >>> before = block.weight.clone()
        >>> bool(torch.equal(reinitialize(block).weight, before))
        False
    """
    for sub in module.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()
    return module


class MomentumAuxiliaryHead(nn.Module):
    """Feed ``head`` with ``ema(h) + correction(h)``, where both branches start as copies of the next block.

    ``ema`` is a gradient-free copy of the first block of the *next* module, kept as an exponential moving
    average of that block's weights (:meth:`update_ema`, called by
    :meth:`~lightning_regs.local_learning.LocalLearningMixin.local_training_step` once per optimizer step: after it
    with ``update="after_step"``, after the backward and before it with ``"before_step"``, as the official code);
    ``correction`` (the paper's "learnable bias"; in the official code a full
    trainable copy of the block) is trained by the local loss. Gradients reach ``h`` through both
    branches. By default both copies start *equal* to the tracked block; ``init="random"`` draws fresh,
    independent weights for each (every submodule's ``reset_parameters``), as the official code does (its copies
    are taken before its global re-initialization). The tracked block is referenced, not registered, so it is not
    duplicated in the state dict.

    Args:
        head: the DGL or InfoPro head, built for the tracked block's output shape.
        next_block: the first layer of the next module.
        init: ``"copy"`` (start equal to ``next_block``) or ``"random"`` (the official code).
        momentum: the EMA momentum in [0, 1] (the paper's 0.995; the official code's default 1.0 never moves it).
        update: when in a step the EMA moves: ``"after_step"`` (follows the block's new weights) or
            ``"before_step"`` (the official code: the weights the step starts from, one step behind).

    Example::

        >>> from lightning_regs.local_learning.heads import DGLHead
        >>> block = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        >>> man = MomentumAuxiliaryHead(DGLHead((8,), num_classes=3), block)
        >>> man(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]), None).shape
        torch.Size([])
        >>> [p.requires_grad for p in man.ema.parameters()]
        [False, False]
    """

    def __init__(
        self,
        head: nn.Module,
        next_block: nn.Module,
        init: ManInit = "copy",
        momentum: float = 0.995,
        update: ManUpdate = "after_step",
    ) -> None:
        super().__init__()
        if init not in ("copy", "random"):
            raise ValueError(f"init must be 'copy' or 'random' (the official code); got {init!r}.")
        check_momentum("MomentumAuxiliaryHead", momentum)
        if update not in ("after_step", "before_step"):
            raise ValueError(f"update must be 'after_step' or 'before_step' (the official code); got {update!r}.")
        self.momentum = float(momentum)
        self.update = update
        self.head = head
        self.ema = copy.deepcopy(next_block)
        self.correction = copy.deepcopy(next_block)
        if init == "random":
            reinitialize(self.ema)
            reinitialize(self.correction)
        self.ema.requires_grad_(False)
        self.correction.requires_grad_(True)
        self._tracked = (next_block,)  # a tuple: not a registered submodule

    @property
    def tracked(self) -> nn.Module:
        """The backbone block the EMA follows."""
        return self._tracked[0]

    def shard_units(self) -> list[nn.Module]:
        """The FSDP2 units of this head, children first: ``ema`` alone, so it is sharded exactly like the block it
        tracks (:meth:`update_ema` then averages shard by shard), then the head itself (``tasks.sharding``)."""
        return [self.ema, self]

    @torch.no_grad()
    def update_ema(self, momentum: float | None = None) -> None:
        """``theta_ema <- momentum · theta_ema + (1 - momentum) · theta_block`` over parameters (not buffers).

        ``momentum`` defaults to the head's own (:attr:`momentum`).

        An in-place :meth:`torch.Tensor.lerp_` per parameter pair, so sharded parameters (DTensors under FSDP2's
        ``fully_shard``) are updated shard by shard, without gathering; the head must then be sharded like the
        tracked block (a DTensor block beside a plain-tensor EMA copy cannot be mixed).
        """
        weight = 1.0 - (self.momentum if momentum is None else momentum)
        for ema, tracked in zip(self.ema.parameters(), self.tracked.parameters(), strict=True):
            ema.lerp_(tracked, weight)

    @override
    def forward(self, h: torch.Tensor, target: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.ema(h) + self.correction(h), target, image)
