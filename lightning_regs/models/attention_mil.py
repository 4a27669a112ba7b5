"""Attention-based multiple-instance learning (ABMIL; Ilse, Tomczak & Welling, ICML 2018), gated or plain.

A bag of N instances (pre-extracted features ``(N, D)``, or images through an ``encoder``) is embedded instance by
instance, ``h_n = ReLU(W h_n^0)``; each head k scores every instance,

- gated (the AEM paper's ABMIL): ``a_kn = w_kᵀ (tanh(V h_n) ⊙ sigmoid(U h_n))``,
- plain: ``a_kn = w_kᵀ tanh(V h_n)``,

pools ``z_k = Σ_n softmax(a_k)_n h_n`` over the bag's real instances, and classifies the heads' pooled embeddings
concatenated. The model returns :class:`MILOutput`: the bag logits and the **pre-softmax** scores ``a`` that AEM's
loss term (:class:`~lightning_regs.tasks.AttentionEntropyTerm`) reads. A padded batch of bags with its
``instance_mask`` gives every bag what it gives alone.

Example::

    >>> import torch
    >>> model = AttentionMIL(in_features=64, num_classes=2)
    >>> out = model(torch.randn(3, 7, 64), torch.ones(3, 7, dtype=torch.bool))
    >>> out.logits.shape, out.attention.shape
    (torch.Size([3, 2]), torch.Size([3, 1, 7]))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from typing_extensions import override

from lightning_regs.functional.mil import masked_attention

__all__ = ["AttentionMIL", "MILOutput"]


@dataclass
class MILOutput:
    """What a MIL model returns: ``logits`` ``(B, C)`` and the pre-softmax ``attention`` scores ``(B, heads, N)``."""

    logits: torch.Tensor
    attention: torch.Tensor


class AttentionMIL(nn.Module):
    """ABMIL: instance embedding, (gated) attention pooling with one or more heads, a linear bag classifier.

    Args:
        in_features: the width ``D`` of an instance's features (the encoder's output width when ``encoder`` is set).
        num_classes: the number of bag classes.
        embed_dim: the width of the instance embedding ``h`` (ABMIL on WSI features: 512; Ilse et al.: 500).
        attention_dim: the width of the attention's hidden layer (``V``, ``U``).
        heads: the number of attention heads; each pools the bag on its own, the classifier reads them all.
        gated: gated attention (tanh ⊙ sigmoid, the AEM paper's ABMIL) or plain (tanh).
        dropout: dropout on the instance embedding.
        encoder: an optional module applied to every instance first (e.g. a CNN for ``(N, C, H, W)`` image
            instances), mapping ``(M, ...)`` to ``(M, in_features)``.

    Example::

        >>> model = AttentionMIL(in_features=16, num_classes=3, heads=2, gated=False)
        >>> model(torch.randn(5, 16)).logits.shape  # one unbatched bag of 5 instances
        torch.Size([1, 3])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int = 2,
        embed_dim: int = 128,
        attention_dim: int = 128,
        heads: int = 1,
        gated: bool = True,
        dropout: float = 0.0,
        encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("embed_dim", embed_dim), ("heads", heads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"AttentionMIL's {name} must be a positive integer, got {value!r}.")
        if not isinstance(attention_dim, int) or attention_dim < 1:
            raise ValueError(f"AttentionMIL's attention_dim must be a positive integer, got {attention_dim!r}.")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 (a negative and a positive bag class), got {num_classes}")
        self.num_classes = num_classes
        self.in_features = in_features
        self.heads = heads
        self.gated = gated
        self.encoder = encoder
        self.embed = nn.Sequential(nn.Linear(in_features, embed_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention_v = nn.Sequential(nn.Linear(embed_dim, attention_dim), nn.Tanh())
        self.attention_u = nn.Sequential(nn.Linear(embed_dim, attention_dim), nn.Sigmoid()) if gated else None
        # No bias: softmax ignores a shift of all scores, so its gradient is 0 up to rounding, which Adam would amplify.
        self.attention_w = nn.Linear(attention_dim, heads, bias=False)
        self.classifier = nn.Linear(heads * embed_dim, num_classes)

    @override
    def forward(self, bags: torch.Tensor, instance_mask: torch.Tensor | None = None) -> MILOutput:
        """Classify ``bags`` ``(B, N, ...)`` (or one bag ``(N, ...)``); ``instance_mask`` ``(B, N)`` marks real ones."""
        if self.encoder is None and bags.dim() == 2:
            bags = bags[None]
        elif self.encoder is not None and instance_mask is None and bags.dim() == 4:
            bags = bags[None]  # one bag of (N, C, H, W) images
        if bags.dim() < 3:
            raise ValueError(
                f"AttentionMIL reads bags (B, N, D) of features (or (B, N, ...) instances with an encoder), got shape "
                f"{tuple(bags.shape)}."
            )
        batch, size = bags.shape[:2]
        instances = bags.reshape(batch * size, *bags.shape[2:])
        if self.encoder is not None and instance_mask is not None:
            # only the real instances: padding would enter BatchNorm's statistics and cost forwards
            real = instance_mask.reshape(-1).to(device=bags.device, dtype=torch.bool)
            encoded = self.encoder(instances[real])
            instances = encoded.new_zeros(batch * size, *encoded.shape[1:])
            instances[real] = encoded
        elif self.encoder is not None:
            instances = self.encoder(instances)
        if instances.dim() != 2 or instances.shape[1] != self.in_features:
            raise ValueError(
                f"AttentionMIL(in_features={self.in_features}) got instances of width "
                f"{tuple(instances.shape[1:])}: give in_features the width of the instance features"
                + (" the encoder returns." if self.encoder is not None else ".")
            )
        embedded = self.embed(instances)  # (B·N, E)
        hidden = self.attention_v(embedded)
        if self.attention_u is not None:
            hidden = hidden * self.attention_u(embedded)
        scores = self.attention_w(hidden).reshape(batch, size, self.heads).transpose(1, 2)  # (B, heads, N)
        weights = masked_attention(scores, instance_mask)
        pooled = weights @ embedded.reshape(batch, size, -1)  # (B, heads, E)
        return MILOutput(self.classifier(pooled.flatten(1)), scores)
