"""MixUp (Zhang et al., ICLR 2018) and CutMix (Yun et al., ICCV 2019) as one mixing of batch rows.

Row ``i`` of a mixed batch is ``w_i ⊙ x_i + (1 − w_i) ⊙ x_{p(i)}``, where ``p`` pairs each row with a partner
row and ``w_i`` is a weight map: the constant ``λ_i`` for MixUp, the indicator of everything outside a box for
CutMix. The targets mix with ``λ_i`` = the mean of ``w_i`` (for CutMix the share of pixels left, i.e. the λ
corrected by the clipped box), so MixUp and CutMix rows can share one batch (per-sample switching).

Pure torch and numpy; the random draws take a ``numpy.random.Generator`` so the caller owns (and checkpoints)
it.

Example::

    >>> import torch, numpy as np
    >>> x = torch.tensor([[1.0], [3.0]])
    >>> mixed = mix_inputs(x, torch.tensor([1, 0]), torch.tensor([0.75, 0.75]))
    >>> mixed.flatten().tolist()
    [1.5, 2.5]
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "MixDraw",
    "box_masks",
    "combine_interpolated",
    "cutmix_boxes",
    "draw_mix",
    "interpolate_loss",
    "mix_inputs",
    "mix_targets",
    "mixed_accuracy",
]


class MixDraw(NamedTuple):
    """One draw of a mixing: each row's partner, its ``λ`` as drawn, and whether it is a CutMix row."""

    partner: torch.Tensor
    lam: torch.Tensor
    cutmix: torch.Tensor


def draw_mix(
    batch_size: int,
    rng: np.random.Generator,
    mixup_alpha: float,
    cutmix_alpha: float,
    switch_prob: float,
    per_sample: bool,
) -> MixDraw:
    """Draw a permutation, ``λ ~ Beta(α, α)`` (one per batch, or one per row) and MixUp-or-CutMix per batch/row.

    ``mixup_alpha = 0`` means CutMix only, ``cutmix_alpha = 0`` MixUp only; with both, a row (or the batch) is
    CutMix with probability ``switch_prob``. The partner of row ``i`` is ``perm[i]`` for a random permutation:
    any batch size works (a row paired with itself is unchanged).

    Example::

        >>> draw = draw_mix(4, np.random.default_rng(0), 0.2, 0.0, 0.0, per_sample=False)
        >>> sorted(draw.partner.tolist()), bool((draw.lam == draw.lam[0]).all()), draw.cutmix.any().item()
        ([0, 1, 2, 3], True, False)
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError("At least one of mixup_alpha and cutmix_alpha must be positive.")
    draws = batch_size if per_sample else 1
    if mixup_alpha > 0 and cutmix_alpha > 0:
        cutmix = rng.random(draws) < switch_prob
    else:
        cutmix = np.full(draws, cutmix_alpha > 0)
    alpha = np.where(cutmix, max(cutmix_alpha, 1e-12), max(mixup_alpha, 1e-12))
    lam = rng.beta(alpha, alpha)
    partner = rng.permutation(batch_size)
    if not per_sample:
        lam, cutmix = np.repeat(lam, batch_size), np.repeat(cutmix, batch_size)
    return MixDraw(torch.from_numpy(partner).long(), torch.from_numpy(lam).float(), torch.from_numpy(cutmix).bool())


def cutmix_boxes(lam: torch.Tensor, height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
    """Boxes ``(B, 4)`` as ``(y1, y2, x1, x2)`` covering ``1 − λ`` of the image before clipping.

    As torchvision's ``v2.CutMix`` and timm's ``rand_bbox``: a centre drawn uniformly on the pixel grid, half
    sides ``int(H·√(1−λ)/2)`` and ``int(W·√(1−λ)/2)``, clipped to the image. The λ a row is trained with is then
    the share of pixels outside its clipped box (:func:`box_masks`), not the λ drawn.

    Example::

        >>> cutmix_boxes(torch.tensor([0.75]), 8, 8, np.random.default_rng(0)).shape
        torch.Size([1, 4])
    """
    cut = torch.sqrt(1.0 - lam.double())
    half_h = (cut * height / 2).floor().long()
    half_w = (cut * width / 2).floor().long()
    cy = torch.from_numpy(rng.integers(0, height, size=len(lam))).long()
    cx = torch.from_numpy(rng.integers(0, width, size=len(lam))).long()
    return torch.stack(
        [(cy - half_h).clamp(0, height), (cy + half_h).clamp(0, height), (cx - half_w).clamp(0, width),
         (cx + half_w).clamp(0, width)], dim=1,
    )  # fmt: skip


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, 1, H, W)`` float masks: 0 inside each row's box, 1 outside (the share of the row's own image).

    Example::

        >>> mask = box_masks(torch.tensor([[0, 2, 0, 2]]), 4, 4)
        >>> float(mask.mean())  # the box covers 4 of 16 pixels
        0.75
    """
    rows = torch.arange(height, device=boxes.device)[None, :, None]
    cols = torch.arange(width, device=boxes.device)[None, None, :]
    y1, y2, x1, x2 = (boxes[:, k, None, None] for k in range(4))
    inside = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)
    return (~inside).float().unsqueeze(1)


def mix_inputs(inputs: torch.Tensor, partner: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``w ⊙ x + (1 − w) ⊙ x[partner]``; ``weight`` is ``(B,)`` (MixUp's λ) or broadcastable maps (CutMix masks).

    Example::

        >>> mix_inputs(torch.tensor([[0.0], [4.0]]), torch.tensor([1, 0]), torch.tensor([1.0, 0.5])).tolist()
        [[0.0], [2.0]]
    """
    if weight.dim() == 1:
        weight = weight.reshape(-1, *([1] * (inputs.dim() - 1)))
    weight = weight.to(device=inputs.device, dtype=inputs.dtype)
    return inputs * weight + inputs[partner.to(inputs.device)] * (1.0 - weight)


def mix_targets(targets: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``λ_i·t_i + (1 − λ_i)·t_{p(i)}`` of class distributions ``(B, C)``: each row is again a distribution.

    Example::

        >>> t = torch.eye(2)
        >>> mix_targets(t, torch.tensor([1, 0]), torch.tensor([0.7, 0.7])).tolist()
        [[0.699999988079071, 0.30000001192092896], [0.30000001192092896, 0.699999988079071]]
    """
    lam = lam.to(device=targets.device, dtype=targets.dtype)[:, None]
    return targets * lam + targets[partner.to(targets.device)] * (1.0 - lam)


def interpolate_loss(loss_fn, target: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``λ·ℓ(t) + (1 − λ)·ℓ(t[partner])`` for a loss that takes class ids only (Composer's ``interpolate_loss``).

    ``loss_fn(target)`` returns the batch mean (then every row must share one λ) or per-row losses ``(B,)``
    (then each row is weighted by its own λ and the mean is taken).

    Raises:
        ValueError: when the rows have different λ and ``loss_fn`` returns a scalar.

    Example::

        >>> import torch.nn.functional as F
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
        >>> loss = interpolate_loss(lambda t: F.cross_entropy(logits, t), torch.tensor([0, 1]), torch.tensor([1, 0]),
        ...                         torch.tensor([1.0, 1.0]))
        >>> torch.allclose(loss, F.cross_entropy(logits, torch.tensor([0, 1])))
        True
    """
    return combine_interpolated(loss_fn(target), loss_fn(target[partner.to(target.device)]), lam)


def combine_interpolated(own: torch.Tensor, mixed_in: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``λ·own + (1 − λ)·mixed_in`` for batch-mean losses (one λ for the batch) or per-row losses ``(B,)``.

    Raises:
        ValueError: when the rows have different λ and the losses are batch means.

    Example::

        >>> float(combine_interpolated(torch.tensor(1.0), torch.tensor(3.0), torch.tensor([0.25, 0.25])))
        2.5
    """
    lam = lam.to(own.device, own.dtype)
    if own.dim() == 0:
        if lam.numel() and not bool((lam == lam[0]).all()):
            raise ValueError(
                "The rows were mixed with different λ (per_sample=True) but the loss returns one number for the "
                "batch: return per-row losses (reduction='none'), mix the targets (mode='targets'), or draw one λ "
                "per batch (per_sample=False)."
            )
        first = lam[0] if lam.numel() else own.new_tensor(1.0)
        return first * own + (1.0 - first) * mixed_in
    return (lam * own + (1.0 - lam) * mixed_in).mean()


def mixed_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, partner: torch.Tensor | None, lam: torch.Tensor | None
) -> torch.Tensor:
    """Per-row credit ``λ·[ŷ = y_i] + (1 − λ)·[ŷ = y_{p(i)}]``: accuracy against both mixed labels (float ``(B,)``).

    Without a mixing (``partner`` None) this is the plain ``[ŷ = y]``; its mean is the training accuracy the MixUp
    card describes (a mixed input has two right answers in proportion λ).

    Example::

        >>> logits = torch.tensor([[3.0, 0.0], [3.0, 0.0]])
        >>> mixed_accuracy(logits, torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0.75, 0.75])).tolist()
        [0.75, 0.25]
    """
    predicted = logits.argmax(dim=-1)
    hit = (predicted == labels).float()
    if partner is None or lam is None:
        return hit
    hit_partner = (predicted == labels[partner.to(labels.device)]).float()
    lam = lam.to(hit.device, hit.dtype)
    return lam * hit + (1.0 - lam) * hit_partner
