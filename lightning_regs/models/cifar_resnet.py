"""The CIFAR ResNets of He et al. (2016), "Deep Residual Learning for Image Recognition", Section 4.2.

A ResNet of depth ``6n + 2`` is a 3x3 stem followed by three stages of ``n`` :class:`BasicBlock` s with
widths ``w, 2w, 4w`` (``w = 16``); the first block of stages 2 and 3 halves the resolution. Shortcuts
that change shape are a strided 1x1 convolution plus BatchNorm, as in the InfoPro, AugLocal and MAN code
bases, so local-learning splits written as ``(stage, block)`` map directly onto layer names
``s{stage}b{block}``.
"""

from __future__ import annotations

from torch import Tensor, nn
from typing_extensions import override

from lightning_regs.models.layered import LayeredModel

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a residual: ``relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))``.

    Both ReLUs are separate, non-inplace modules so that activation hooks see each one.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first convolution (and of the projection shortcut).

    Example::

        >>> import torch
        >>> block = BasicBlock(16, 32, stride=2)
        >>> block(torch.zeros(2, 16, 32, 32)).shape
        torch.Size([2, 32, 16, 16])
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()

    @override
    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(LayeredModel):
    """ResNet for 32x32 inputs with ``depth = 6n + 2`` (20, 32, 44, 56, 110, ...).

    ``layers`` holds ``stem`` (conv3x3 + BN + ReLU) and then one entry per block, ``s1b0 ... s3b{n-1}``;
    ``head`` is global average pooling, flattening and a linear classifier.

    Args:
        depth: total number of weighted layers, ``6n + 2`` with ``n >= 1``.
        num_classes: number of logits.
        in_channels: channels of the input images.
        base_width: channels of the first stage; stages 2 and 3 use twice and four times as many.

    Raises:
        ValueError: if ``depth`` is not of the form ``6n + 2``.

    Example::

        >>> import torch
        >>> model = CifarResNet(depth=20, num_classes=10)
        >>> len(model.layers), model.layer_names[:3], model.layer_names[-1]
        (10, ('stem', 's1b0', 's1b1'), 's3b2')
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, depth: int = 32, num_classes: int = 10, in_channels: int = 3, base_width: int = 16) -> None:
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(
                f"CifarResNet depth must be 6n + 2 for an integer n >= 1 (8, 14, 20, 32, 44, 56, 110, ...); "
                f"got {depth}."
            )
        blocks_per_stage = (depth - 2) // 6

        layers: list[tuple[str, nn.Module]] = [
            (
                "stem",
                nn.Sequential(
                    nn.Conv2d(in_channels, base_width, kernel_size=3, stride=1, padding=1, bias=False),
                    nn.BatchNorm2d(base_width),
                    nn.ReLU(),
                ),
            )
        ]
        in_planes = base_width
        for stage, (planes, first_stride) in enumerate(
            [(base_width, 1), (2 * base_width, 2), (4 * base_width, 2)], start=1
        ):
            for block in range(blocks_per_stage):
                stride = first_stride if block == 0 else 1
                layers.append((f"s{stage}b{block}", BasicBlock(in_planes, planes, stride)))
                in_planes = planes

        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_planes, num_classes))
        super().__init__(layers=layers, head=head, num_classes=num_classes)
        self.depth = depth
        self.base_width = base_width
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-20 (``n = 3``, 0.27M parameters)."""
    return CifarResNet(depth=20, num_classes=num_classes, in_channels=in_channels)


def resnet32(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-32 (``n = 5``, 0.46M parameters)."""
    return CifarResNet(depth=32, num_classes=num_classes, in_channels=in_channels)


def resnet44(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-44 (``n = 7``, 0.66M parameters)."""
    return CifarResNet(depth=44, num_classes=num_classes, in_channels=in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-56 (``n = 9``, 0.85M parameters)."""
    return CifarResNet(depth=56, num_classes=num_classes, in_channels=in_channels)


def resnet110(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-110 (``n = 18``, 1.7M parameters)."""
    return CifarResNet(depth=110, num_classes=num_classes, in_channels=in_channels)
