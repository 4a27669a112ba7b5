"""A torchvision Vision Transformer as a feature backbone, optionally from a local state dict, last blocks trainable."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer
from typing_extensions import override

__all__ = ["ViTFeatures"]


class ViTFeatures(nn.Module):
    """A ViT returning its ``(B, hidden_dim)`` class-token features (ViT-B/16 by default), as SimGCD's backbone.

    ``state_dict``: a file holding a torchvision-layout ``VisionTransformer`` state dict (loaded with
    ``weights_only=True``; the classification head's keys, if any, are ignored). Nothing is downloaded.
    DINO's released ViT-B/16 weights use timm's key names: convert them to torchvision's layout first.
    SimGCD trains only the last block: ``trainable_blocks=1`` freezes everything before it.

    Example::

        >>> vit = ViTFeatures(image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16)
        >>> vit(torch.zeros(3, 3, 8, 8)).shape, sum(p.requires_grad for p in vit.parameters()) > 0
        (torch.Size([3, 8]), True)
    """

    def __init__(
        self,
        state_dict: str | None = None,
        trainable_blocks: int | None = 1,
        image_size: int = 224,
        patch_size: int = 16,
        num_layers: int = 12,
        num_heads: int = 12,
        hidden_dim: int = 768,
        mlp_dim: int = 3072,
    ) -> None:
        super().__init__()
        self.vit = VisionTransformer(image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim)
        self.vit.heads = nn.Identity()
        self.feature_dim = hidden_dim
        if state_dict is not None:
            weights = torch.load(state_dict, map_location="cpu", weights_only=True)
            weights = {k: v for k, v in weights.items() if not k.startswith("heads.")}
            self.vit.load_state_dict(weights)
        if trainable_blocks is not None:
            self.vit.requires_grad_(False)
            layers = list(self.vit.encoder.layers)
            for layer in layers[len(layers) - trainable_blocks :]:
                layer.requires_grad_(True)  # the final norm stays frozen, as in SimGCD

    @override
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vit(image)
