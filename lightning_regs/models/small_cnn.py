"""A three-block CNN small enough for scikit-learn's 8x8 digits, which also runs on 32x32 images."""

from __future__ import annotations

from torch import nn

from lightning_regs.models.layered import LayeredModel

__all__ = ["SmallCNN"]


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]


class SmallCNN(LayeredModel):
    """Conv-BN-ReLU blocks ``block1`` (``w``), ``block2`` (``2w``, then 2x2 max-pooling), ``block3`` (``2w``).

    ``head`` is global average pooling, flattening and a linear classifier, so any input of at least
    2x2 pixels works. With ``width=32`` it has about 57k parameters and reaches ≥ 95 % validation accuracy
    on the digits data set within about 20 epochs.

    Args:
        num_classes: number of logits.
        in_channels: channels of the input images.
        width: channels of ``block1``; ``block2`` and ``block3`` use twice as many.

    Example::

        >>> import torch
        >>> model = SmallCNN(num_classes=10, in_channels=1, width=8)
        >>> model.layer_names
        ('block1', 'block2', 'block3')
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        layers: list[tuple[str, nn.Module]] = [
            ("block1", nn.Sequential(*_conv_bn_relu(in_channels, width))),
            ("block2", nn.Sequential(*_conv_bn_relu(width, 2 * width), nn.MaxPool2d(2))),
            ("block3", nn.Sequential(*_conv_bn_relu(2 * width, 2 * width))),
        ]
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))
        super().__init__(layers=layers, head=head, num_classes=num_classes)
        self.width = width
