"""The CIFAR pre-activation ResNet-18 of He et al. (2016), "Identity Mappings in Deep Residual Networks".

A stride-1 3x3 stem with nothing after it, four stages of two :class:`PreActBlock` s (widths
``k, 2k, 4k, 8k``, strides ``1, 2, 2, 2``) and the paper's final BN → ReLU before pooling and the linear
classifier. This is the PreActResNet-18 used for CIFAR in PS-KD; implementations differ only in the
non-residual BN: the head BN here has ``16k`` parameters, pytorch-cifar has none, and PS-KD's code
has a ``2k``-parameter BN after the stem instead. With ``use_batchnorm=False`` every BatchNorm becomes
:class:`torch.nn.Identity`, as in the width-16 network of the grokking local-complexity study.
"""

from __future__ import annotations

from torch import Tensor, nn
from typing_extensions import override

from lightning_regs.models.layered import LayeredModel

__all__ = ["PreActBlock", "PreActResNet18"]


def _norm(channels: int, use_batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if use_batchnorm else nn.Identity()


class PreActBlock(nn.Module):
    """Pre-activation basic block: ``conv2(relu2(bn2(conv1(relu1(bn1(x)))))) + shortcut``.

    When the shape changes, the shortcut is a strided 1x1 convolution of the pre-activated input
    ``relu1(bn1(x))``; otherwise it is ``x`` itself.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first convolution (and of the projection shortcut).
        use_batchnorm: use BatchNorm, or :class:`torch.nn.Identity` in its place.

    Example::

        >>> import torch
        >>> block = PreActBlock(64, 128, stride=2)
        >>> block(torch.zeros(2, 64, 32, 32)).shape
        torch.Size([2, 128, 16, 16])
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, use_batchnorm: bool = True) -> None:
        super().__init__()
        self.bn1 = _norm(in_planes, use_batchnorm)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = _norm(planes, use_batchnorm)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)

    @override
    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + shortcut


class PreActResNet18(LayeredModel):
    """Pre-activation ResNet-18 for 32x32 inputs.

    ``layers`` holds ``stem`` (a single 3x3 convolution) and ``s1b0, s1b1, ..., s4b1``; ``head`` is
    BN → ReLU → global average pooling → flatten → linear.

    Args:
        num_classes: number of logits.
        in_channels: channels of the input images.
        base_width: channels of the first stage ``k``; later stages use ``2k, 4k, 8k``.
        use_batchnorm: use BatchNorm, or :class:`torch.nn.Identity` everywhere a BatchNorm would be.

    Example::

        >>> import torch
        >>> model = PreActResNet18(num_classes=10, base_width=16, use_batchnorm=False)
        >>> model.layer_names
        ('stem', 's1b0', 's1b1', 's2b0', 's2b1', 's3b0', 's3b1', 's4b0', 's4b1')
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        base_width: int = 64,
        use_batchnorm: bool = True,
    ) -> None:
        layers: list[tuple[str, nn.Module]] = [
            ("stem", nn.Conv2d(in_channels, base_width, kernel_size=3, stride=1, padding=1, bias=False))
        ]
        in_planes = base_width
        widths = [base_width, 2 * base_width, 4 * base_width, 8 * base_width]
        for stage, (planes, first_stride) in enumerate(zip(widths, [1, 2, 2, 2], strict=True), start=1):
            for block in range(2):
                stride = first_stride if block == 0 else 1
                layers.append((f"s{stage}b{block}", PreActBlock(in_planes, planes, stride, use_batchnorm)))
                in_planes = planes

        head = nn.Sequential(
            _norm(in_planes, use_batchnorm),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(in_planes, num_classes),
        )
        super().__init__(layers=layers, head=head, num_classes=num_classes)
        self.base_width = base_width
        self.use_batchnorm = use_batchnorm
