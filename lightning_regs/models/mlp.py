"""A fully connected classifier with the depth and initialisation-scale knobs of Omnigrok (Liu et al., 2023).

``depth`` counts :class:`torch.nn.Linear` modules, so ``depth=3`` is ``Linear, act, Linear, act, Linear``.
``init_scale`` is Omnigrok's alpha: every ``Linear`` parameter is multiplied by it after PyTorch's default
initialisation. A large alpha (8.0 with ReLU on MNIST) starts the network far outside the "Goldilocks zone"
of weight norms, the regime in which it memorises first and generalises (groks) much later.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lightning_regs.models.activations import CRReLU
from lightning_regs.models.layered import LayeredModel

__all__ = ["MLP"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "crrelu": CRReLU,  # learnable ε (0.01 at the start), one per layer: lightning_regs.models.CRReLU
}


class MLP(LayeredModel):
    """Multi-layer perceptron that flattens its input first, so it takes ``(B, C, H, W)`` or ``(B, D)``.

    ``layers`` holds ``fc1 ... fc{depth-1}``, each a small :class:`torch.nn.Sequential` of
    ``Linear`` and its own activation module (``fc1`` starts with a :class:`torch.nn.Flatten`);
    ``head`` is the final ``Linear``.

    Args:
        in_features: size of the flattened input.
        num_classes: number of logits.
        width: units in every hidden layer.
        depth: number of ``Linear`` modules, at least 2.
        activation: one of ``"relu"``, ``"gelu"``, ``"tanh"``, ``"leaky_relu"``, ``"silu"``, ``"crrelu"``
            (:class:`~lightning_regs.models.CRReLU`, whose learnable ``ε`` starts at 0.01).
        init_scale: factor applied to every ``Linear`` parameter after the default initialisation
            (Omnigrok's alpha; 8.0 with ReLU is the grokking regime). An activation's own parameter
            (CRReLU's ``ε``) is not scaled.
        bias: whether the ``Linear`` modules have biases.

    Raises:
        ValueError: if ``depth < 2`` or ``activation`` is unknown.

    Example::

        >>> import torch
        >>> model = MLP(in_features=64, num_classes=10, width=32, depth=3)
        >>> model.layer_names
        ('fc1', 'fc2')
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_features: int = 784,
        num_classes: int = 10,
        width: int = 200,
        depth: int = 3,
        activation: str = "relu",
        init_scale: float = 1.0,
        bias: bool = True,
    ) -> None:
        if depth < 2:
            raise ValueError(f"MLP depth counts Linear modules and must be >= 2 (one hidden layer); got {depth}.")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"Unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}.")
        make_activation = _ACTIVATIONS[activation]

        layers: list[tuple[str, nn.Module]] = [
            ("fc1", nn.Sequential(nn.Flatten(), nn.Linear(in_features, width, bias=bias), make_activation()))
        ]
        for index in range(2, depth):
            layers.append((f"fc{index}", nn.Sequential(nn.Linear(width, width, bias=bias), make_activation())))
        super().__init__(layers=layers, head=nn.Linear(width, num_classes, bias=bias), num_classes=num_classes)
        self.in_features = in_features
        self.width = width
        self.depth = depth
        self.activation = activation
        self.init_scale = float(init_scale)

        if self.init_scale != 1.0:
            with torch.no_grad():
                for linear in (m for m in self.modules() if isinstance(m, nn.Linear)):
                    for parameter in linear.parameters():
                        parameter.mul_(self.init_scale)
