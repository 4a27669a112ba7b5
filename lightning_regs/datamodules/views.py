"""Several augmented views of one image, stacked: what contrastive and GCD methods train on."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from typing_extensions import override

__all__ = ["TwoViews"]


class TwoViews(nn.Module):
    """Apply ``transform`` ``views`` times to the same image and stack the results: ``(views, C, H, W)``.

    Collated, a batch's ``image`` is ``(B, views, C, H, W)``, the layout
    :class:`~lightning_regs.tasks.GCDClassifier` trains on.

    Example::

        >>> views = TwoViews(lambda x: x + torch.randn_like(x))(torch.zeros(1, 4, 4))
        >>> views.shape, bool((views[0] != views[1]).any())
        (torch.Size([2, 1, 4, 4]), True)
    """

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor], views: int = 2) -> None:
        super().__init__()
        if views < 1:
            raise ValueError(f"views must be at least 1, got {views}.")
        self.transform, self.views = transform, views

    @override
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(image) for _ in range(self.views)])
