"""AugLocal auxiliary networks (Ma, Wu, Si, Tan, ICLR 2024): fresh copies of uniformly picked later layers.

Locality is per layer: with ``L`` layers and aux depth ``d``, layers ``0 .. L-d-2`` each form a module with
its own auxiliary network, and the last module is layers ``L-d-1 .. L-1`` trained through the classifier
(``K = L - d``, see :func:`~lightning_regs.local_learning.splits.every_layer_split`). The auxiliary network of
layer ``l`` stacks freshly initialized copies of ``d_l`` layers picked uniformly from ``l+1 .. L-1`` (the last
layer always among them), then global pooling, ``BatchNorm1d`` when ``d_l <= 1``, and a linear classifier,
trained with cross-entropy. ``d_l`` decays linearly with ``l`` ("pyramidal", coefficient ``tau``).

Both formulas are evaluated in the official code's float arithmetic and order (``remaining / depth * i``; ``d · (1 -
i·tau/(K-2)) + i·tau/(K-2)``) with Python's :func:`round` (half to even), so ties land where the official code puts
them (``5.4999999`` rounds to 5 there, where exact arithmetic would give ``5.5`` → 6). Rebuilt blocks downsample as
the official code does (:func:`auglocal_strides`): at most stride 2 per block, the rest carried to the next block and
dropped after the last.

Example::

    >>> auglocal_depths(16, 3)
    [3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2]
    >>> auglocal_indices(0, 16, 3)
    [5, 10, 15]
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from typing_extensions import override

from lightning_regs.functional.classification import classification_loss
from lightning_regs.local_learning.heads import TokenMean
from lightning_regs.models.cifar_resnet import BasicBlock

__all__ = ["AugLocalHead", "auglocal_depths", "auglocal_indices", "auglocal_strides"]


def auglocal_depths(num_layers: int, d: int, tau: float = 0.5, pyramid: bool = True) -> list[int]:
    """Aux depths ``d_i`` of the ``K - 1`` locally trained layers, ``K = num_layers - d``.

    ``d_i = max(1, round(d · (1 - i·tau/(K - 2)) + i·tau/(K - 2)))`` for ``i = 0 .. K-2``; constant ``d`` without
    ``pyramid`` (and for ``K = 2``, where there is a single hidden layer).

    Example::

        >>> auglocal_depths(16, 2)  # ResNet-32, d = 2: round(1.5) == 2
        [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
        >>> auglocal_depths(8, 3, pyramid=False)
        [3, 3, 3, 3]
    """
    if not isinstance(d, int) or not 1 <= d <= num_layers - 1:
        raise ValueError(
            f"AugLocal depth d must be an integer in [1, {num_layers - 1}] for a model with {num_layers} layers "
            f"(the last d layers train with the classifier); got {d!r}."
        )
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"The pyramid coefficient tau must be in [0, 1] (the paper uses 0.5); got {tau}.")
    K = num_layers - d
    if not pyramid or K <= 2:
        return [d] * (K - 1)
    return [max(1, round(d * (1 - (i * tau) / (K - 2)) + (i * tau) / (K - 2) * 1)) for i in range(K - 1)]


def auglocal_indices(layer: int, num_layers: int, depth: int) -> list[int]:
    """Indices of the later layers whose fresh copies form the aux network of ``layer`` (``unifSamp``).

    All of ``layer+1 .. L-1`` if ``depth >= L-1-layer``, else ``round(layer + (L-1-layer) / depth · i)`` for
    ``i = 1 .. depth``; the last layer ``L - 1`` is always included.

    Example::

        >>> auglocal_indices(2, 16, 2)  # 8.5 rounds to 8 (half to even)
        [8, 15]
        >>> auglocal_indices(12, 16, 5)
        [13, 14, 15]
    """
    if not 0 <= layer < num_layers - 1 or depth < 1:
        raise ValueError(f"Need 0 <= layer < {num_layers - 1} and depth >= 1; got layer={layer}, depth={depth}.")
    remaining = num_layers - 1 - layer
    if depth >= remaining:
        return list(range(layer + 1, num_layers))
    return [round(layer + remaining / depth * i) for i in range(1, depth + 1)]


def auglocal_strides(in_channels: int, channels: Sequence[int]) -> list[int]:
    """Strides of the rebuilt blocks of one aux network, from the input width and each copied layer's width.

    The official rule: every doubling of the width asks for one 2x downsampling; a block takes at most one
    (stride 2), the rest waits for the next block, and what is left after the last block is dropped. So with
    ``d = 1`` the stem's aux net on a CIFAR ResNet is one 16 → 64 block of stride 2 (16x16 output), not 8x8.

    Example::

        >>> auglocal_strides(16, [64])
        [2]
        >>> auglocal_strides(16, [16, 64, 64])
        [1, 2, 2]
    """
    strides, pending, width = [], 0, in_channels
    for out in channels:
        if out < width or out % width:
            raise ValueError(f"AugLocal rebuilds blocks of growing width; a {width} -> {out} block cannot be built.")
        pending += (out // width).bit_length() - 1  # int(log2(out // width)), as the official code computes it
        stride = 2 if pending >= 1 else 1
        pending -= stride == 2
        strides.append(stride)
        width = out
    return strides


def _init_fresh(module: nn.Module) -> nn.Module:
    # A new initialization, like the backbone's: PyTorch defaults, Kaiming-normal (fan_out) convolutions.
    for sub in module.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
        if isinstance(sub, nn.Conv2d):
            nn.init.kaiming_normal_(sub.weight, mode="fan_out", nonlinearity="relu")
    return module


def _shape_adapter(in_shape: tuple[int, ...], expected_in: tuple[int, ...]) -> nn.Module | None:
    """A map from ``in_shape`` features to ``expected_in`` ones, or None when there is no simple one."""
    if len(in_shape) == 3 and len(expected_in) == 3:
        (channels, height, width), (wanted, wanted_height, wanted_width) = in_shape, expected_in
        stride = height // wanted_height if wanted_height else 0
        if stride >= 1 and (height, width) == (wanted_height * stride, wanted_width * stride):
            return nn.Sequential(
                nn.Conv2d(channels, wanted, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(wanted),
                nn.ReLU(),
            )
    if len(in_shape) == 1 and len(expected_in) == 1:
        return nn.Sequential(nn.Linear(in_shape[0], expected_in[0]), nn.ReLU())
    return None


def _fresh_copy(
    layer: nn.Module, name: str, in_shape: tuple[int, ...], expected_in: tuple[int, ...], out_shape: tuple[int, ...]
) -> nn.Module:
    if in_shape == expected_in:
        return _init_fresh(copy.deepcopy(layer))
    if isinstance(layer, BasicBlock) and len(in_shape) == 3 and in_shape[1] % out_shape[1] == 0:
        # The copy reads narrower, larger features than the original: rebuild the block for them, with the
        # stride that reproduces the backbone's resolution at this layer (AugLocal's downsampling blocks).
        return _init_fresh(BasicBlock(in_shape[0], out_shape[0], stride=in_shape[1] // out_shape[1]))
    adapter = _shape_adapter(in_shape, expected_in)
    if adapter is not None:
        # Any other layer: a strided 1x1 convolution (or a linear map) brings the features to its input shape.
        return _init_fresh(nn.Sequential(adapter, copy.deepcopy(layer)))
    raise ValueError(
        f"AugLocal copies layer {name!r}, which reads features of shape {expected_in}, onto features of shape "
        f"{in_shape}, and no 1x1-convolution or linear adapter maps one to the other: "
        f"{_mismatch(in_shape, expected_in)}. Use a model whose layers keep compatible shapes, or a smaller d."
    )


def _mismatch(in_shape: tuple[int, ...], expected_in: tuple[int, ...]) -> str:
    if len(in_shape) == 3 and len(expected_in) == 3:
        return (
            f"the resolution {in_shape[1]}x{in_shape[2]} cannot become {expected_in[1]}x{expected_in[2]} "
            "(it must shrink by one whole factor)"
        )
    if len(in_shape) == 3:
        return "image features cannot feed a flat layer"
    return "flat features cannot feed a layer that reads images"


class AugLocalHead(nn.Module):
    """AugLocal's auxiliary network for one layer: fresh copies of later layers, pooling, a linear classifier.

    The copies have their own, newly initialized weights (nothing is shared with the backbone). A copied
    layer whose input shape differs from the features it reads (a block from a later, wider stage) is
    rebuilt as a :class:`~lightning_regs.models.cifar_resnet.BasicBlock` with the right widths and stride,
    as the paper does; a layer of any other kind (a pre-activation or bottleneck block, a VGG convolution,
    a linear layer) gets a fresh 1x1 convolution + BN + ReLU with the stride of the resolution ratio (a
    linear layer + ReLU for flat features) in front of its copy, our extension.

    Args:
        layers: the backbone's layer sequence.
        shapes: per-sample output shape of every layer (for the input size the model trains on).
        layer: index of the layer this head supervises.
        depth: number of copied layers ``d_l`` (see :func:`auglocal_depths`).
        num_classes: number of logits.
        norm: ``BatchNorm1d`` before the classifier when ``depth <= 1``, as in the paper.

    Example::

        >>> from lightning_regs.models import resnet20
        >>> net = resnet20()
        >>> shapes = [(16, 8, 8)] * 4 + [(32, 4, 4)] * 3 + [(64, 2, 2)] * 3
        >>> head = AugLocalHead(net.layers, shapes, 0, 2, 10)
        >>> head.indices, head(torch.randn(2, 16, 8, 8), torch.tensor([0, 1])).shape
        ([4, 9], torch.Size([]))
    """

    def __init__(
        self,
        layers: nn.Sequential,
        shapes: Sequence[Sequence[int]],
        layer: int,
        depth: int,
        num_classes: int,
        norm: bool = True,
    ) -> None:
        super().__init__()
        shapes = [tuple(int(s) for s in shape) for shape in shapes]
        if len(shapes) != len(layers):
            raise ValueError(f"Need one output shape per layer ({len(layers)}); got {len(shapes)}.")
        names = [name for name, _ in layers.named_children()]
        self.indices = auglocal_indices(layer, len(layers), depth)
        self.strides: list[int] | None = None  # the rebuilt blocks' strides, on the official (BasicBlock) path
        if (
            all(isinstance(layers[k], BasicBlock) and len(shapes[k]) == 3 for k in self.indices)
            and len(shapes[layer]) == 3
        ):
            copies, current = self._official_blocks(shapes, layer)
        else:
            copies, current = [], shapes[layer]
            for k in self.indices:
                copies.append(_fresh_copy(layers[k], names[k], current, shapes[k - 1], shapes[k]))
                current = shapes[k]
        self.layers = nn.Sequential(*copies)
        pool: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if len(current) == 3 else [nn.Flatten()]
        if len(current) == 2:  # tokens (N, D): averaged, as DGL's head does
            pool = [TokenMean()]
        features = current[-1] if len(current) == 2 else current[0]
        bn: list[nn.Module] = [nn.BatchNorm1d(features)] if norm and depth <= 1 else []
        self.classifier = nn.Sequential(*pool, *bn, nn.Linear(features, num_classes))

    def _official_blocks(self, shapes: list[tuple[int, ...]], layer: int) -> tuple[list[nn.Module], tuple[int, ...]]:
        """Fresh BasicBlocks of the copied layers' widths, strided by :func:`auglocal_strides` (the official build)."""
        channels, height, width = shapes[layer]
        widths = [shapes[k][0] for k in self.indices]
        self.strides = auglocal_strides(channels, widths)
        copies: list[nn.Module] = []
        for out, stride in zip(widths, self.strides, strict=True):
            copies.append(_init_fresh(BasicBlock(channels, out, stride=stride)))
            channels, height, width = out, -(-height // stride), -(-width // stride)
        return copies, (channels, height, width)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.layers(h))

    @override
    def forward(self, h: torch.Tensor, target: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        return classification_loss(self.logits(h), target)
