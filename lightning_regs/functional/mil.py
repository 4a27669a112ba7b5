"""Attention over the instances of a bag: masked softmax, its entropy, and AEM's loss (Zhang et al., 2024).

AEM ("Attention Entropy Maximization for Multiple Instance Learning based Whole Slide Image Classification") adds
``λ · Σ_n p_n log p_n`` to the bag's cross-entropy, with ``p = softmax(a)`` over the **pre-softmax** attention scores
``a`` of the bag's N instances: minimising it maximises the attention's entropy ``H(p)``, spreading attention over
more instances. For several heads the term is averaged over the heads; over a batch of bags, averaged over the bags.
Padded instances (``mask`` False) get no attention and add nothing, so a bag gives the same value alone and padded.

Example::

    >>> import torch
    >>> scores = torch.zeros(1, 1, 4)  # one bag, one head, 4 instances: uniform attention
    >>> attention_entropy(scores).item() == torch.log(torch.tensor(4.0)).item()
    True
    >>> round(attention_entropy_loss(scores).item(), 4)  # = -log 4: the most AEM can lower the loss
    -1.3863
"""

from __future__ import annotations

import torch

__all__ = ["attention_entropy", "attention_entropy_loss", "masked_attention", "normalized_attention_entropy"]


def _as_heads(scores: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores as ``(B, H, N)`` and the mask as ``(B, 1, N)`` bool (all True when ``mask`` is None)."""
    if scores.dim() == 1:  # one bag, one head: (N,)
        scores = scores[None, None]
    elif scores.dim() == 2:  # (B, N): one head
        scores = scores[:, None]
    elif scores.dim() != 3:
        raise ValueError(
            f"Attention scores must be (N,), (B, N) or (B, heads, N) pre-softmax scores over a bag's instances, "
            f"got shape {tuple(scores.shape)}."
        )
    if mask is None:
        return scores, torch.ones(scores.shape[0], 1, scores.shape[-1], dtype=torch.bool, device=scores.device)
    mask = mask.to(device=scores.device, dtype=torch.bool)
    if mask.dim() == 1:
        mask = mask[None]
    if mask.shape != (scores.shape[0], scores.shape[-1]):
        raise ValueError(
            f"The instance mask has shape {tuple(mask.shape)} but the attention scores {tuple(scores.shape)}: the "
            "mask must be (B, N), one flag per instance of each bag (batch['instance_mask'])."
        )
    if not mask.any(dim=-1).all():
        raise ValueError("A bag of the batch has no real instance (an all-False row of the instance mask).")
    return scores, mask[:, None]


def _at_least_float32(scores: torch.Tensor) -> torch.Tensor:
    return scores.to(torch.promote_types(scores.dtype, torch.float32))


def masked_attention(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(scores)`` over each bag's real instances, 0 on padded ones; same shape as ``scores``.

    Args:
        scores: pre-softmax attention scores ``(N,)``, ``(B, N)`` or ``(B, heads, N)``.
        mask: ``(B, N)`` bool, True for real instances (``batch["instance_mask"]``); None: all real.

    Example::

        >>> masked_attention(torch.tensor([[0.0, 0.0, 5.0]]), torch.tensor([[True, True, False]])).tolist()
        [[0.5, 0.5, 0.0]]
    """
    shape = scores.shape
    heads, real = _as_heads(scores, mask)
    weights = _at_least_float32(heads).masked_fill(~real, float("-inf")).softmax(dim=-1)
    return weights.to(scores.dtype).reshape(shape)


def attention_entropy(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The entropy ``H = -Σ_n p_n log p_n`` (nats) of each bag's attention, averaged over heads: ``(B,)``.

    Computed from ``log_softmax`` of the scores (exact for very peaked attention: a one-hot bag gives 0).

    Example::

        >>> attention_entropy(torch.tensor([[0.0, -1e4, -1e4]])).abs().tolist()  # all attention on one instance
        [0.0]
    """
    heads, real = _as_heads(scores, mask)
    log_p = _at_least_float32(heads).masked_fill(~real, float("-inf")).log_softmax(dim=-1)
    # 0 · log 0 is 0 for padded instances; zeroing log p first (not torch.where after) keeps the gradient finite
    plogp = log_p.exp() * log_p.masked_fill(~real, 0.0)
    return -plogp.sum(dim=-1).mean(dim=-1)


def normalized_attention_entropy(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``H / log N`` per bag, ``(B,)`` in [0, 1]: 1 for uniform attention, 0 for all of it on one instance.

    ``N`` is the bag's number of real instances; a bag of one instance gives 1 (its attention is uniform).

    Example::

        >>> normalized_attention_entropy(torch.zeros(2, 5), torch.tensor([[True] * 5, [True] + [False] * 4])).tolist()
        [1.0, 1.0]
    """
    _, real = _as_heads(scores, mask)
    sizes = real[:, 0].sum(dim=-1).float()
    entropy = attention_entropy(scores, mask)
    return torch.where(sizes > 1, entropy / sizes.clamp(min=2).log(), torch.ones_like(entropy))


def attention_entropy_loss(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """AEM's term, ``mean over bags and heads of Σ_n p_n log p_n = -H``: add ``λ ×`` this to the bag's loss.

    Args:
        scores: the **pre-softmax** attention scores ``(N,)``, ``(B, N)`` or ``(B, heads, N)``.
        mask: ``(B, N)`` bool, True for real instances; None: every instance is real.

    Returns:
        A scalar in ``[-log N, 0]``: ``-log N`` for uniform attention, 0 for one-hot attention.

    Raises:
        ValueError: for scores of another rank, a mask of another shape, or a bag without a real instance.

    Example::

        >>> scores = torch.tensor([[2.0, 0.0, 0.0]], requires_grad=True)
        >>> attention_entropy_loss(scores).backward()  # descending it lowers the top score, raises the others
        >>> (scores.grad[0, 0] > 0).item(), (scores.grad[0, 1:] < 0).all().item()
        (True, True)
    """
    return -attention_entropy(scores, mask).mean()
