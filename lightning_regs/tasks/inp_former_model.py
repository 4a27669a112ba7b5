"""INP-Former's network (Luo et al., CVPR 2025): a frozen encoder, the INP extractor, a bottleneck and the decoder.

Re-derived from the official ``models/uad.py`` and ``models/vision_transformer.py`` (luow23/INP-Former, MIT):

* the fused tokens ``f`` are the mean of the encoder layers (ViT blocks 2-9 in the paper);
* the INP extractor: ``M`` learnable queries, one block of softmax cross-attention from the queries to the image's
  own tokens (one LayerNorm for both sides) with residuals and an MLP, gives the image's prototypes ``p``;
* a bottleneck MLP (``dim -> 4 dim -> dim``) maps ``f``; each decoder block attends *from the tokens to the
  prototypes*: queries and keys L2-normalized, a learnable per-head scale, ReLU instead of softmax, and no residual
  around the attention (``x = attn(x, p); x = x + mlp(x)``);
* the decoder outputs, last block first, are averaged in consecutive groups; group ``g`` reconstructs the mean of
  the ``g``-th group of encoder layers (``[[2..5], [6..9]]`` in the paper).

Example::

    >>> from lightning_regs.models.frozen_encoder import FrozenEncoder
    >>> enc = FrozenEncoder("torchvision:vit_b_16", layers=[0, 1], weights=None, image_size=32)
    >>> net = INPFormerNetwork(enc, num_groups=2, num_decoder_blocks=2)
    >>> out = net(torch.zeros(2, 3, 32, 32))
    >>> [tuple(e.shape) for e in out.encoder_levels], tuple(out.prototypes.shape)
    ([(2, 768, 2, 2), (2, 768, 2, 2)], (2, 6, 768))
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from lightning_regs.functional._checks import check_int
from lightning_regs.models.frozen_encoder import EncoderFeatures, FrozenEncoder

__all__ = ["AggregationBlock", "DecoderBlock", "INPFormerNetwork", "INPFormerOutput", "default_num_heads"]


def default_num_heads(dim: int) -> int:
    """Attention heads for a token width: ``dim // 64`` (ViT-S/B/L: 6/12/16), lowered until it divides ``dim``.

    Example::

        >>> default_num_heads(768), default_num_heads(176), default_num_heads(40)
        (12, 2, 1)
    """
    heads = max(1, dim // 64)
    while dim % heads:
        heads -= 1
    return heads


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class AggregationBlock(nn.Module):
    """INP extractor block: ``q = q + attn(norm(q), norm(tokens))`` (softmax), then ``q = q + mlp(norm2(q))``.

    Example::

        >>> AggregationBlock(8, 2)(torch.zeros(1, 3, 8), torch.randn(1, 5, 8)).shape
        torch.Size([1, 3, 8])
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-8), nn.LayerNorm(dim, eps=1e-8)
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.mlp = _mlp(dim, int(dim * mlp_ratio))

    @override
    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Queries ``(B, M, C)`` attend over ``tokens`` ``(B, N, C)``; returns ``(B, M, C)``."""
        q_in, t_in = self.norm1(queries), self.norm1(tokens)
        (b, m, c), n, h = q_in.shape, t_in.shape[1], self.num_heads
        q = self.q(q_in).view(b, m, h, c // h).transpose(1, 2)
        k, v = self.kv(t_in).view(b, n, 2, h, c // h).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (c // h) ** -0.5).softmax(dim=-1)
        queries = queries + self.proj((attn @ v).transpose(1, 2).reshape(b, m, c))
        return queries + self.mlp(self.norm2(queries))


class DecoderBlock(nn.Module):
    """INP-guided decoder block: ``x = attn(norm(x), norm(p))`` (cosine, per-head scale, ReLU), ``x = x + mlp(x)``.

    Example::

        >>> DecoderBlock(8, 2)(torch.randn(1, 5, 8), torch.randn(1, 3, 8)).shape
        torch.Size([1, 5, 8])
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-8), nn.LayerNorm(dim, eps=1e-8)
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.scale = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.mlp = _mlp(dim, int(dim * mlp_ratio))

    @override
    def forward(self, tokens: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, N, C)`` attend to the prototypes ``(B, M, C)``; returns ``(B, N, C)``."""
        x_in, p_in = self.norm1(tokens), self.norm1(prototypes)
        (b, n, c), m, h = x_in.shape, p_in.shape[1], self.num_heads
        q = F.normalize(self.q(x_in).view(b, n, h, c // h).transpose(1, 2), dim=-1)
        k, v = self.kv(p_in).view(b, m, 2, h, c // h).permute(2, 0, 3, 1, 4)
        attn = F.relu((q @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.scale)
        x = self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


class INPFormerOutput(NamedTuple):
    """What :class:`INPFormerNetwork` returns: per level the encoder targets and decoder reconstructions
    ``(B, C, h, w)``, the fused encoder tokens ``(B, N, C)`` and the image's prototypes ``(B, M, C)``."""

    encoder_levels: list[torch.Tensor]
    decoder_levels: list[torch.Tensor]
    tokens: torch.Tensor
    prototypes: torch.Tensor


class INPFormerNetwork(nn.Module):
    """The frozen ``encoder`` and INP-Former's trainable parts (prototypes, extractor, bottleneck, decoder).

    ViT encoders: the returned layers (all of one width) are split into ``num_groups`` consecutive groups of equal
    size; a group's target is the mean of its layers, the fused tokens the mean of all. CNN encoders (the offline
    stand-in): every returned map is bilinearly resized to the first one's grid and the channels are concatenated
    into one token width; that map is every group's target and the fused tokens (a departure: the paper's encoder
    is a ViT). ``num_decoder_blocks`` (8 in the paper) must be a multiple of ``num_groups``.

    Args:
        encoder: the frozen feature extractor; its inputs are normalized as it expects.
        num_prototypes: ``M``, the number of intrinsic normal prototypes (6).
        num_groups: the levels the loss and the anomaly map compare (2).
        num_decoder_blocks: decoder blocks (8).
        num_heads: attention heads; None: :func:`default_num_heads` of the token width.
    """

    def __init__(
        self,
        encoder: FrozenEncoder,
        num_prototypes: int = 6,
        num_groups: int = 2,
        num_decoder_blocks: int = 8,
        num_heads: int | None = None,
    ) -> None:
        super().__init__()
        owner = "INPFormer"
        self.encoder = encoder
        self.num_prototypes = check_int(owner, "num_prototypes", num_prototypes, low=1)
        self.num_groups = check_int(owner, "num_groups", num_groups, low=1)
        check_int(owner, "num_decoder_blocks", num_decoder_blocks, low=1)
        if num_decoder_blocks % num_groups:
            raise ValueError(
                f"{owner}: num_decoder_blocks ({num_decoder_blocks}) must be a multiple of num_groups ({num_groups}): "
                "each level averages an equal share of the decoder blocks (8 and 2 in the paper)."
            )
        channels = list(encoder.channels)
        self.vit = encoder.family.endswith("vit")
        if self.vit:
            if len(set(channels)) != 1 or len(channels) % num_groups:
                raise ValueError(
                    f"{owner}: the encoder's {len(channels)} layers {list(encoder.layers)} must split into num_groups "
                    f"({num_groups}) groups of equal size (the paper: 8 layers, 2 groups); change encoder_layers."
                )
            dim = channels[0]
        else:
            dim = sum(channels)
        heads = default_num_heads(dim) if num_heads is None else check_int(owner, "num_heads", num_heads, low=1)
        if dim % heads:
            raise ValueError(f"{owner}: num_heads ({heads}) must divide the token width {dim}.")
        self.dim = dim
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, dim))
        self.extractor = AggregationBlock(dim, heads)
        self.bottleneck = _mlp(dim, 4 * dim)
        self.decoder = nn.ModuleList(DecoderBlock(dim, heads) for _ in range(num_decoder_blocks))
        self.reset_trainable()

    def trainable(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates: everything but the encoder's."""
        return [p for name, p in self.named_parameters() if not name.startswith("encoder.")]

    @torch.no_grad()
    def reset_trainable(self) -> None:
        """The official initialization: Linear weights truncated normal (std 0.01 in +-0.03), biases 0, LayerNorms
        1 and 0, per-head scales 1; the prototypes keep their standard normal draw."""
        for module in (self.extractor, self.bottleneck, self.decoder):
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.01, a=-0.03, b=0.03)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.LayerNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, int]]:
        """Fused tokens ``(B, N, C)``, each group's target tokens, and the grid ``(h, w)``."""
        found: EncoderFeatures = self.encoder(image)
        if self.vit:
            layers, grid = list(found.features), found.grid
            size = len(layers) // self.num_groups
            groups = [torch.stack(layers[i : i + size]).mean(0) for i in range(0, len(layers), size)]
            return torch.stack(layers).mean(0), groups, (int(grid[0]), int(grid[1]))
        maps = found.maps()
        grid = tuple(int(s) for s in maps[0].shape[-2:])
        resized = [m if m.shape[-2:] == grid else F.interpolate(m, size=grid, mode="bilinear") for m in maps]
        tokens = torch.cat(resized, dim=1).flatten(2).transpose(1, 2)
        return tokens, [tokens] * self.num_groups, grid

    @override
    def forward(self, image: torch.Tensor) -> INPFormerOutput:
        """Run the network on images normalized for the encoder."""
        tokens, targets, grid = self.encode(image)
        tokens = tokens.detach()
        targets = [t.detach() for t in targets]
        queries = self.prototypes.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        prototypes = self.extractor(queries, tokens)
        x, outputs = self.bottleneck(tokens), []
        for block in self.decoder:
            x = block(x, prototypes)
            outputs.append(x)
        outputs = outputs[::-1]
        size = len(outputs) // self.num_groups
        decoded = [torch.stack(outputs[i : i + size]).mean(0) for i in range(0, len(outputs), size)]

        def as_map(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)

        return INPFormerOutput([as_map(t) for t in targets], [as_map(t) for t in decoded], tokens, prototypes)
