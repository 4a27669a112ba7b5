"""INP-Former's losses, anomaly map and image score (Luo et al., CVPR 2025): pure torch, no Lightning.

* :func:`coherence_loss`: ``L_c = mean_{b,n} min_m (1 - cos(f_bn, p_bm))`` (the official ``gather_loss``);
* :func:`soft_mining_cosine_loss`: the global cosine loss per level, encoder side detached, whose gradient at each
  position is multiplied by ``(d_p / mean d)^gamma`` (the official ``global_cosine_hm_adaptive``);
* :func:`anomaly_map`, :func:`gaussian_blur` and :func:`image_score`: ``1 - cos`` per level, upsampled, averaged,
  smoothed by a 5x5 Gaussian with sigma 4, and the mean of the top 1 % (the official ``evaluation_batch``).

Example::

    >>> e = [torch.randn(2, 8, 4, 4)]
    >>> abs(float(soft_mining_cosine_loss(e, [e[0].clone().requires_grad_()]))) < 1e-6
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from typing_extensions import override

from lightning_regs.functional._checks import check_int, check_number

__all__ = [
    "anomaly_map",
    "coherence_loss",
    "gaussian_blur",
    "gaussian_kernel",
    "image_score",
    "point_distance",
    "soft_mining_cosine_loss",
    "soft_mining_factor",
]


def coherence_loss(tokens: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """INP coherence loss: mean over images ``b``, tokens ``n`` of ``min_m (1 - cos(tokens[b, n], prototypes[b, m]))``.

    Args:
        tokens: ``(B, N, C)`` fused encoder tokens.
        prototypes: ``(B, M, C)`` the image's own prototypes (or ``(M, C)``, shared by every image).

    Example::

        >>> p = torch.eye(3)[None]
        >>> float(coherence_loss(p[:, :2], p)), float(coherence_loss(torch.tensor([[[0.0, 0.0, 1.0]]]), p[:, :2]))
        (0.0, 1.0)
    """
    if tokens.ndim != 3:
        raise ValueError(f"coherence_loss: tokens must be (B, N, C), got shape {tuple(tokens.shape)}.")
    if prototypes.ndim == 2:
        prototypes = prototypes.unsqueeze(0).expand(tokens.shape[0], -1, -1)
    if prototypes.ndim != 3 or prototypes.shape[0] != tokens.shape[0] or prototypes.shape[2] != tokens.shape[2]:
        raise ValueError(
            f"coherence_loss: prototypes must be (B, M, C) or (M, C) matching tokens {tuple(tokens.shape)}, "
            f"got {tuple(prototypes.shape)}."
        )
    distance = 1.0 - F.cosine_similarity(tokens.unsqueeze(2), prototypes.unsqueeze(1), dim=-1)  # (B, N, M)
    return distance.min(dim=2).values.mean()


def point_distance(encoder: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` over channels at every position: ``(B, C, H, W)`` pairs give ``(B, 1, H, W)``.

    Example::

        >>> point_distance(torch.ones(1, 2, 1, 1), -torch.ones(1, 2, 1, 1)).flatten().tolist()
        [2.0]
    """
    return (1.0 - F.cosine_similarity(encoder, decoder, dim=1)).unsqueeze(1)


def soft_mining_factor(encoder: torch.Tensor, decoder: torch.Tensor, gamma: float) -> torch.Tensor:
    """The gradient factor ``(d_p / mean d)^gamma``, ``d_p = 1 - cos(e_p, d_p)``, detached; ``(B, 1, H, W)``.

    The mean is over the whole level: every image of the batch and every position (as the official code). Distances
    are clamped at 0 (rounding makes ``1 - cos`` slightly negative where the reconstruction is exact; unclamped, the
    official factor can then be negative or infinite), and a level reconstructed exactly everywhere (mean 0) gets
    factor 0 at every position (1 for ``gamma = 0``).

    Example::

        >>> e = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]])  # two positions, two channels
        >>> d = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # distances 0 and 1
        >>> soft_mining_factor(e, d, 2.0).flatten().tolist()
        [0.0, 4.0]
    """
    with torch.no_grad():
        distance = point_distance(encoder.detach(), decoder.detach()).clamp_min(0.0)  # rounding: 1 - cos >= 0
        return (distance / distance.mean().clamp_min(torch.finfo(distance.dtype).tiny)) ** gamma


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradient by a fixed factor (broadcast)."""

    @staticmethod
    @override
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(factor)
        return x.view_as(x)

    @staticmethod
    @override
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (factor,) = ctx.saved_tensors
        return grad * factor, None


def soft_mining_cosine_loss(
    encoder_levels: Sequence[torch.Tensor], decoder_levels: Sequence[torch.Tensor], gamma: float = 3.0
) -> torch.Tensor:
    """INP-Former's soft-mining loss: mean over levels of ``mean_b (1 - cos(flatten e_b, flatten d_b))``.

    The encoder side is detached. The value does not depend on ``gamma``: only the gradient reaching each
    decoder position ``p`` is multiplied by :func:`soft_mining_factor` ``(d_p / mean d)^gamma`` (``gamma = 0``: the
    plain global cosine gradient), so hard (badly reconstructed) positions dominate training.

    Args:
        encoder_levels: per level, ``(B, C, H, W)`` encoder features (targets).
        decoder_levels: the matching decoder reconstructions.
        gamma: the mining exponent (3 in the paper), ``>= 0``.

    Example::

        >>> e, d = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3, requires_grad=True)
        >>> bool(torch.isclose(soft_mining_cosine_loss([e], [d], 3.0), soft_mining_cosine_loss([e], [d], 0.0)))
        True
    """
    gamma = check_number("soft_mining_cosine_loss", "gamma", gamma, low=0.0)
    if len(encoder_levels) != len(decoder_levels) or not encoder_levels:
        raise ValueError(
            f"soft_mining_cosine_loss: got {len(encoder_levels)} encoder and {len(decoder_levels)} decoder levels; "
            "pass one reconstruction per encoder level (at least one)."
        )
    total = encoder_levels[0].new_zeros(())
    for encoder, decoder in zip(encoder_levels, decoder_levels, strict=True):
        if encoder.ndim != 4 or encoder.shape != decoder.shape:
            raise ValueError(
                "soft_mining_cosine_loss: each level's encoder and decoder features must be (B, C, H, W) of one "
                f"shape, got {tuple(encoder.shape)} and {tuple(decoder.shape)}."
            )
        encoder = encoder.detach()
        if decoder.requires_grad:
            decoder = _ScaleGradient.apply(decoder, soft_mining_factor(encoder, decoder, gamma))
        cosine = F.cosine_similarity(encoder.flatten(1), decoder.flatten(1), dim=1)
        total = total + (1.0 - cosine).mean()
    return total / len(encoder_levels)


def gaussian_kernel(kernel_size: int = 5, sigma: float = 4.0) -> torch.Tensor:
    """The normalized ``(kernel_size, kernel_size)`` Gaussian kernel (the official ``get_gaussian_kernel``: 5, 4).

    Example::

        >>> k = gaussian_kernel(5, 4.0)
        >>> tuple(k.shape), round(float(k.sum()), 6), bool(k[2, 2] == k.max())
        ((5, 5), 1.0, True)
    """
    check_int("gaussian_kernel", "kernel_size", kernel_size, low=1)
    check_number("gaussian_kernel", "sigma", sigma, low=0.0, low_open=True)
    x = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2.0
    one = torch.exp(-(x**2) / (2.0 * sigma**2))
    kernel = one[:, None] * one[None, :]
    return (kernel / kernel.sum()).float()


def gaussian_blur(maps: torch.Tensor, kernel_size: int = 5, sigma: float = 4.0) -> torch.Tensor:
    """Smooth ``(B, 1, H, W)`` maps with :func:`gaussian_kernel`, zero padding (as the official ``Conv2d``).

    Example::

        >>> blurred = gaussian_blur(torch.ones(1, 1, 9, 9))  # inside: a weighted mean; the border sees zeros
        >>> round(blurred[0, 0, 4, 4].item(), 5), bool(blurred[0, 0, 0, 0] < 0.5)
        (1.0, True)
    """
    kernel = gaussian_kernel(kernel_size, sigma).to(maps.device, maps.dtype)[None, None]
    return F.conv2d(maps, kernel, padding=kernel_size // 2)


def anomaly_map(
    encoder_levels: Sequence[torch.Tensor],
    decoder_levels: Sequence[torch.Tensor],
    size: tuple[int, int],
    kernel_size: int = 5,
    sigma: float | None = 4.0,
) -> torch.Tensor:
    """``(B, 1, H, W)`` anomaly map: ``1 - cos`` per level, bilinearly upsampled to ``size`` (``align_corners=True``,
    as the official ``cal_anomaly_maps``), averaged over levels, then :func:`gaussian_blur` (``sigma=None``: none).

    Example::

        >>> e = [torch.ones(1, 2, 2, 2)]
        >>> anomaly_map(e, [-e[0]], (4, 4), sigma=None).round(decimals=4).unique().tolist()
        [2.0]
    """
    if len(encoder_levels) != len(decoder_levels) or not encoder_levels:
        raise ValueError(
            f"anomaly_map: got {len(encoder_levels)} encoder and {len(decoder_levels)} decoder levels; pass one "
            "reconstruction per encoder level (at least one)."
        )
    maps = [
        F.interpolate(point_distance(e, d), size=tuple(size), mode="bilinear", align_corners=True)
        for e, d in zip(encoder_levels, decoder_levels, strict=True)
    ]
    mean = torch.stack(maps, dim=0).mean(dim=0)
    return mean if sigma is None else gaussian_blur(mean, kernel_size, sigma)


def image_score(maps: torch.Tensor, top_ratio: float = 0.01) -> torch.Tensor:
    """Image scores ``(B,)``: the mean of each map's ``max(1, floor(top_ratio * H * W))`` largest values
    (the official ``max_ratio=0.01``); ``top_ratio=0`` gives the maximum.

    Example::

        >>> maps = torch.arange(200.0).view(1, 1, 10, 20)  # the top 1 %: 199 and 198
        >>> image_score(maps).tolist(), image_score(maps, 0.0).tolist()
        ([198.5], [199.0])
    """
    top_ratio = check_number("image_score", "top_ratio", top_ratio, low=0.0, high=1.0)
    flat = maps.flatten(1)
    count = max(1, int(flat.shape[1] * top_ratio)) if top_ratio > 0 else 1
    return flat.topk(min(count, flat.shape[1]), dim=1).values.mean(dim=1)
