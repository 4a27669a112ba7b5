"""Auxiliary heads that give each gradient-isolated module its local loss: DGL and InfoPro.

A head is built from the shape of the features it reads (``(C, H, W)``; for DGL also ``(F,)`` or tokens
``(N, D)``) and is called as ``head(h, target, image) -> loss``. ``target`` holds class ids ``(B,)`` or
probabilities ``(B, C)``; ``image`` is the network input, which InfoPro reconstructs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from lightning_regs.functional._checks import check_bool, check_int, check_number
from lightning_regs.functional.classification import classification_loss, hard_labels
from lightning_regs.functional.supcon import SupConAnchors, supervised_contrastive_loss

__all__ = [
    "INFOPRO_LAMBDAS",
    "DGLHead",
    "InfoProHead",
    "TaskLoss",
    "TokenMean",
    "infopro_lambdas",
    "unit_range",
    "unnormalize",
]

# InfoPro's command file (CIFAR-10): (lambda_recon first, lambda_task first, lambda_recon last, lambda_task last),
# keyed by (ResNet depth, K). The paper tuned them for its contrastive task loss (task_loss="contrast"); they also
# weight CE when task_loss="cross_entropy".
INFOPRO_LAMBDAS: dict[tuple[int, int], tuple[float, float, float, float]] = {
    (32, 2): (5.0, 1.0, 0.0, 0.0),
    (32, 4): (6.0, 0.0, 1.0, 2.0),
    (32, 8): (5.0, 0.0, 0.0, 2.0),
    (32, 16): (5.0, 0.05, 0.2, 0.5),
    (110, 2): (5.0, 0.5, 0.0, 0.0),
    (110, 4): (1.0, 0.0, 0.0, 1.0),
    (110, 8): (5.0, 0.0, 0.0, 1.0),
    (110, 16): (5.0, 0.0, 0.5, 1.0),
}


def infopro_lambdas(K: int, endpoints: Sequence[float] = (5.0, 1.0, 0.0, 0.0)) -> list[tuple[float, float]]:
    """``(lambda_recon, lambda_task)`` for the ``K - 1`` auxiliary heads, interpolated over the module index.

    Module ``j`` (0-based) gets ``first + (last - first) · j / (K - 2)``. Unlike MAN's code, which divides a
    *stage* index by ``K - 2`` and so extrapolates to negative weights at K = 3 or 4, the ratio stays in
    [0, 1]; weights are also clamped at zero so that negative endpoints cannot turn a loss into a reward.

    Example::

        >>> infopro_lambdas(4, (6, 0, 1, 2))
        [(6.0, 0.0), (3.5, 1.0), (1.0, 2.0)]
        >>> infopro_lambdas(2, (5, 1, 0, 0))
        [(5.0, 1.0)]
    """
    if len(endpoints) != 4:
        raise ValueError(f"InfoPro lambdas are (recon_first, task_first, recon_last, task_last); got {endpoints}.")
    recon_first, task_first, recon_last, task_last = (float(v) for v in endpoints)
    out = []
    for j in range(K - 1):
        ratio = j / (K - 2) if K > 2 else 0.0
        recon = recon_first + (recon_last - recon_first) * ratio
        task = task_first + (task_last - task_first) * ratio
        out.append((max(recon, 0.0), max(task, 0.0)))
    return out


def unit_range(image: torch.Tensor) -> torch.Tensor:
    """Rescale each sample to [0, 1] (min-max): InfoPro's reconstruction target from a normalized image.

    Example::

        >>> unit_range(torch.tensor([[[[-1.0, 0.0, 3.0]]]])).tolist()
        [[[[0.0, 0.25, 1.0]]]]
    """
    flat = image.detach().flatten(1)
    low = flat.min(dim=1).values.view(-1, *([1] * (image.dim() - 1)))
    high = flat.max(dim=1).values.view(-1, *([1] * (image.dim() - 1)))
    return (image.detach() - low) / (high - low).clamp_min(1e-12)


def unnormalize(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``image · std + mean`` per channel: the official InfoPro target (``_image_restore``) from a normalized image.

    Example::

        >>> image = torch.tensor([[[[1.0]], [[-1.0]]]])  # one 2-channel 1x1 image
        >>> unnormalize(image, torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.5])).flatten()
        tensor([0.7500, 0.0000])
    """
    shape = (1, -1) + (1,) * (image.dim() - 2)
    return image.detach() * std.view(shape) + mean.view(shape)


def _check_shape(owner: str, name: str, shape: Sequence[int]) -> tuple[int, ...]:
    """A sample shape: positive ints (not bools)."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise TypeError(f"{owner}: {name} must be a sample shape of positive ints, got {shape!r}.")
    return tuple(check_int(owner, f"{name} (a sample shape {tuple(shape)})", s, low=1) for s in shape)


def check_batch_for_norm(head: nn.Module, h: torch.Tensor, norm: bool) -> None:
    """A head with batch normalization trains on batches of at least 2 (one row has no batch statistics)."""
    if norm and head.training and h.shape[0] < 2:
        raise ValueError(
            f"{type(head).__name__} normalizes over the batch (norm=True, head_norm in setup_local_learning) and got a "
            f"batch of {h.shape[0]} sample: BatchNorm has no statistics for one row. Train with batch_size >= 2 (and "
            "drop_last=True when the last batch could hold one sample), or build the heads with head_norm=False."
        )


def _norm2d(channels: int, norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if norm else nn.Identity()


def _norm1d(features: int, norm: bool) -> nn.Module:
    return nn.BatchNorm1d(features) if norm else nn.Identity()


class DGLHead(nn.Module):
    """DGL's auxiliary classifier (Belilovsky et al., 2020), trained with cross-entropy only.

    The structure of the official code (the AugLocal repository's re-implementation of eugenium/DGL):
    image features ``(C, H, W)`` are average-pooled to ``ceil(H/4) x ceil(W/4)``, go through three 1x1
    convolutions ``C -> C`` without bias (+BN, ReLU), are pooled to ``s x s`` with
    ``s = min(ceil(H/4), 2)``, then two ``Linear(C·s², C·s²)`` without bias (+BN1d, ReLU) and a linear
    classifier. The head's width follows the features': 9,962 parameters on 16 channels with 10 classes,
    37,834 on 32, 147,338 on 64. Flat features ``(F,)`` (MLPs; not in the papers) skip the convolutional
    part: two ``Linear(F, F)`` (+BN1d, ReLU) and the classifier; token features ``(N, D)`` (vision
    transformers; not in the papers either) are averaged over the ``N`` tokens first. Without ``norm`` the
    convolutions and hidden linear layers get a bias instead of the normalization.

    Args:
        in_shape: shape of one sample's features, ``(C, H, W)``, ``(F,)`` or ``(N, D)``.
        num_classes: number of logits.
        hidden: width of the two hidden linear layers; ``None`` (the official head): ``C·s²`` (or ``F``).
        norm: batch normalization in the head (turn off for tiny per-device batches).

    Example::

        >>> head = DGLHead((16, 32, 32), num_classes=10)
        >>> sum(p.numel() for p in head.parameters())
        9962
        >>> head(torch.randn(4, 16, 32, 32), torch.tensor([0, 1, 2, 3]), None).shape
        torch.Size([])
        >>> DGLHead((17, 8), num_classes=10)(torch.randn(4, 17, 8), torch.tensor([0, 1, 2, 3])).shape  # tokens
        torch.Size([])
    """

    def __init__(self, in_shape: Sequence[int], num_classes: int, hidden: int | None = None, norm: bool = True) -> None:
        super().__init__()
        in_shape = _check_shape("DGLHead", "in_shape", in_shape)
        check_int("DGLHead", "num_classes", num_classes, low=1)
        if hidden is not None:
            check_int("DGLHead", "hidden (or None: the feature width)", hidden, low=1)
        self.norm = check_bool("DGLHead", "norm", norm)
        if len(in_shape) == 3:
            channels, height, width = in_shape
            pooled = (math.ceil(height / 4), math.ceil(width / 4))
            side = (min(pooled[0], 2), min(pooled[1], 2))
            convs: list[nn.Module] = [nn.AdaptiveAvgPool2d(pooled)]
            for _ in range(3):
                convs += [nn.Conv2d(channels, channels, 1, bias=not norm), _norm2d(channels, norm), nn.ReLU()]
            convs += [nn.AdaptiveAvgPool2d(side), nn.Flatten()]
            self.features: nn.Module = nn.Sequential(*convs)
            flat = channels * side[0] * side[1]
        elif len(in_shape) == 1:
            self.features = nn.Flatten()
            flat = in_shape[0]
        elif len(in_shape) == 2:
            self.features = TokenMean()
            flat = in_shape[1]
        else:
            raise ValueError(f"DGLHead reads (C, H, W), (F,) or (N, D) features; got a sample shape {in_shape}.")
        width = flat if hidden is None else int(hidden)
        self.classifier = nn.Sequential(
            nn.Linear(flat, width, bias=not norm),
            _norm1d(width, norm),
            nn.ReLU(),
            nn.Linear(width, width, bias=not norm),
            _norm1d(width, norm),
            nn.ReLU(),
            nn.Linear(width, num_classes),
        )

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(h))

    @override
    def forward(self, h: torch.Tensor, target: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        check_batch_for_norm(self, h, getattr(self, "norm", True))
        return classification_loss(self.logits(h), target)


class TokenMean(nn.Module):
    """The mean over the tokens: ``(B, N, D) -> (B, D)``.

    Example::

        >>> TokenMean()(torch.ones(2, 5, 3)).shape
        torch.Size([2, 3])
    """

    @override
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mean(dim=1)


TaskLoss = Literal["cross_entropy", "contrast"]


class InfoProHead(nn.Module):
    """InfoPro's auxiliary head (Wang et al., 2021): ``lambda_recon · BCE(decoder(h), x) + lambda_task · L_task``.

    The decoder upsamples ``h`` bilinearly to the image size, then conv3x3(C→12)+BN+ReLU and
    conv3x3(12→image channels); its sigmoid output is compared by BCE with the image rescaled per sample
    to [0, 1] (:func:`unit_range`), or, given ``image_mean`` and ``image_std`` (the official code), with the
    un-normalized image ``x · std + mean`` (:func:`unnormalize`). The classifier is the paper's
    "1c2f": conv3x3 (stride 2 and twice the channels below 64 channels) + BN + ReLU, global pooling,
    ``Linear(128)`` + ReLU, ``Linear(num_classes)``. ``L_task`` is cross-entropy on those logits, or with
    ``task_loss="contrast"`` (the paper's best setting) the supervised contrastive loss
    (:func:`~lightning_regs.functional.supcon.supervised_contrastive_loss`, temperature 0.07) on the
    L2-normalized output of a ``Linear(feature_dim)`` last layer instead. A term whose lambda is zero is not
    computed.

    Args:
        in_shape: ``(C, H, W)`` of the features.
        num_classes: number of logits.
        image_shape: ``(channels, height, width)`` of the network input.
        lambda_recon: weight of the reconstruction term.
        lambda_task: weight of the task term.
        norm: batch normalization in the head.
        task_loss: ``cross_entropy`` or ``contrast`` (supervised contrastive; soft targets use their arg-max).
        feature_dim: embedding size of the contrastive head (128 in the paper).
        temperature: temperature of the contrastive loss (0.07 in the paper).
        image_mean, image_std: the per-channel ``Normalize`` of the input; given, the reconstruction target is
            the un-normalized image, as in the official code.
        supcon_anchors: ``"with_positives"`` or ``"all"`` (the official mean over every anchor; see
            :func:`~lightning_regs.functional.supcon.supervised_contrastive_loss`).

    Example::

        >>> head = InfoProHead((16, 32, 32), 10, image_shape=(3, 32, 32), lambda_recon=5.0, lambda_task=1.0)
        >>> head(torch.randn(2, 16, 32, 32), torch.tensor([0, 1]), torch.randn(2, 3, 32, 32)).shape
        torch.Size([])
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        image_shape: Sequence[int],
        lambda_recon: float = 5.0,
        lambda_task: float = 1.0,
        norm: bool = True,
        task_loss: TaskLoss = "cross_entropy",
        feature_dim: int = 128,
        temperature: float = 0.07,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        supcon_anchors: SupConAnchors = "with_positives",
    ) -> None:
        super().__init__()
        if (image_mean is None) != (image_std is None):
            raise ValueError("Pass both image_mean and image_std (the input's Normalize), or neither.")
        if task_loss not in ("cross_entropy", "contrast"):
            raise ValueError(f"InfoPro's task loss is 'cross_entropy' or 'contrast'; got {task_loss!r}.")
        in_shape = tuple(int(s) for s in in_shape)
        image_shape = tuple(int(s) for s in image_shape)
        if len(in_shape) != 3 or len(image_shape) != 3:
            raise ValueError(
                f"InfoProHead reconstructs images from (C, H, W) features; got feature shape {in_shape} and image "
                f"shape {image_shape}. Use head='dgl' for flat or token features (an MLP's, a vision transformer's)."
            )
        for name, value in (("lambda_recon", lambda_recon), ("lambda_task", lambda_task)):
            check_number("InfoProHead", name, value, low=0)
        check_number("InfoProHead", "temperature", temperature, low=0, low_open=True)
        check_int("InfoProHead", "num_classes", num_classes, low=1)
        check_int("InfoProHead", "feature_dim", feature_dim, low=1)
        channels = in_shape[0]
        if (
            image_mean is not None
            and image_std is not None
            and (len(image_mean) != image_shape[0] or len(image_std) != image_shape[0] or min(image_std) <= 0)
        ):
            raise ValueError(
                f"image_mean and image_std need one value per input channel ({image_shape[0]}), std > 0; got "
                f"{tuple(image_mean)} and {tuple(image_std)}."
            )
        # Not persistent: constants of the data, not state (not in the checkpoint).
        self.register_buffer("image_mean", torch.tensor(image_mean or (), dtype=torch.float32), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std or (), dtype=torch.float32), persistent=False)
        self.supcon_anchors = supcon_anchors
        self.lambda_recon = float(lambda_recon)
        self.lambda_task = float(lambda_task)
        self.task_loss, self.temperature = task_loss, float(temperature)
        self.decoder = nn.Sequential(
            nn.Upsample(size=image_shape[1:], mode="bilinear", align_corners=True),
            nn.Conv2d(channels, 12, 3, padding=1),  # with a bias before its BN, as the official decoder has
            _norm2d(12, norm),
            nn.ReLU(),
            nn.Conv2d(12, image_shape[0], 3, padding=1),
        )
        out_channels, stride = (2 * channels, 2) if channels < 64 else (channels, 1)
        self.classifier = nn.Sequential(
            nn.Conv2d(channels, out_channels, 3, stride=stride, padding=1, bias=not norm),
            _norm2d(out_channels, norm),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(out_channels, 128),
            nn.ReLU(),
            nn.Linear(128, feature_dim if task_loss == "contrast" else num_classes),
        )

    @property
    def unnormalized_target(self) -> bool:
        """Whether the reconstruction target is the un-normalized image (``image_mean``/``image_std`` given)."""
        return self.image_mean.numel() > 0

    @override
    def forward(self, h: torch.Tensor, target: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        loss = h.new_zeros(())
        if self.lambda_recon > 0:
            if image is None:
                raise ValueError("InfoProHead reconstructs the input image: pass `image`.")
            # with-logits BCE of the decoder's pre-sigmoid output: the same loss, and safe under autocast.
            goal = (
                unnormalize(image, self.image_mean, self.image_std) if self.unnormalized_target else unit_range(image)
            )
            recon = F.binary_cross_entropy_with_logits(self.decoder(h), goal)
            loss = loss + self.lambda_recon * recon
        if self.lambda_task > 0:
            out = self.classifier(h)
            if self.task_loss == "contrast":
                task = supervised_contrastive_loss(
                    out, hard_labels(target), self.temperature, self.temperature, anchors=self.supcon_anchors
                )
            else:
                task = classification_loss(out, target)
            loss = loss + self.lambda_task * task
        return loss
