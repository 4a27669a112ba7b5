"""The ImageNet channel statistics, defined once: the default normalization of the image DataModules and encoders.

It imports nothing, so :mod:`lightning_regs.models` may read it as well as the DataModules.

Example::

    >>> IMAGENET_MEAN, IMAGENET_STD
    ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
"""

from __future__ import annotations

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD"]

#: per-channel (R, G, B) mean of ImageNet's training images, in [0, 1] pixel units (torchvision's and timm's)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
#: per-channel (R, G, B) standard deviation of ImageNet's training images, in [0, 1] pixel units
IMAGENET_STD = (0.229, 0.224, 0.225)
