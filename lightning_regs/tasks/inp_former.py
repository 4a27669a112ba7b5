"""INP-Former (Luo et al., CVPR 2025) as a LightningModule: trains on normal images, scores anomalies.

Example::

    >>> task = INPFormer("torchvision:resnet18", encoder_weights=None, encoder_layers=[1, 2], num_decoder_blocks=2)
    >>> maps, scores = task.score(torch.zeros(2, 3, 32, 32))
    >>> tuple(maps.shape), tuple(scores.shape)
    ((2, 1, 32, 32), (2,))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.optim.lr_scheduler import LambdaLR
from typing_extensions import override

from lightning_regs.batch import IMAGE, LABEL
from lightning_regs.datamodules.mvtec import IMAGENET_MEAN, IMAGENET_STD
from lightning_regs.functional._checks import check_bool, check_int, check_number, check_optional_number
from lightning_regs.functional.inp_former import anomaly_map, coherence_loss, image_score, soft_mining_cosine_loss
from lightning_regs.models.frozen_encoder import FrozenEncoder
from lightning_regs.tasks.anomaly_steps import AnomalyEvaluationSteps
from lightning_regs.tasks.inp_former_model import INPFormerNetwork
from lightning_regs.tasks.stable_adamw import StableAdamW
from lightning_regs.trusted_loading import TrustedCheckpointLoading

__all__ = ["INPFormer", "WarmCosine"]

PAPER_LAYERS = (2, 3, 4, 5, 6, 7, 8, 9)


class WarmCosine:
    """The official ``WarmCosineScheduler`` as a ``LambdaLR`` factor: linear warm-up from 0 over ``warmup_steps``
    (``linspace(0, base, warmup_steps)``), then cosine from ``base`` to ``final`` until ``total_steps``, then ``final``.

    Example::

        >>> s = WarmCosine(1e-3, 1e-4, total_steps=110, warmup_steps=10)
        >>> [round(s(i) * 1e-3, 6) for i in (0, 9, 10, 60, 200)]
        [0.0, 0.001, 0.001, 0.00055, 0.0001]
    """

    def __init__(self, base: float, final: float, total_steps: int, warmup_steps: int) -> None:
        self.base, self.final = float(base), float(final)
        self.total_steps, self.warmup_steps = int(total_steps), min(int(warmup_steps), int(total_steps))

    def __call__(self, step: int) -> float:
        if step >= self.total_steps:
            return self.final / self.base
        if step < self.warmup_steps:
            return step / (self.warmup_steps - 1) if self.warmup_steps > 1 else 1.0
        span = self.total_steps - self.warmup_steps
        value = self.final + 0.5 * (self.base - self.final) * (
            1 + math.cos(math.pi * (step - self.warmup_steps) / span)
        )
        return value / self.base


class INPFormer(AnomalyEvaluationSteps, TrustedCheckpointLoading, pl.LightningModule):
    """INP-Former: a frozen encoder, intrinsic normal prototypes and an INP-guided decoder that reconstructs the
    encoder's features; the anomaly map is where the reconstruction fails.

    Training (normal images only; a training batch with ``label == 1`` is a named error) minimizes ``L = L_sm +
    coherence_weight * L_c`` (:func:`~lightning_regs.functional.inp_former.soft_mining_cosine_loss`,
    :func:`~lightning_regs.functional.inp_former.coherence_loss`), logged as ``train/loss``, ``train/soft_mining`` and
    ``train/coherence``. The encoder is frozen and out of the optimizer: AdamW (amsgrad, ``eps=1e-10``; or the official
    StableAdamW with ``update_clip=1.0``) with the official warm-up and cosine decay per step, gradients clipped to norm
    ``grad_clip_norm``. Validation and test log ``<stage>/num_images`` and the seven
    :data:`~lightning_regs.tasks.anomaly_evaluation.METRICS` through :class:`~lightning_regs.tasks.AnomalyEvaluation`
    (as :class:`~lightning_regs.tasks.MeanImageAnomalyBaseline`: images with non-finite pixels left out and counted in
    ``<stage>/nonfinite_inputs``); predict returns ``anomaly_map``, ``score`` and ``index`` per batch. Batches are MVTec
    dicts (``image``, ``mask``, ``label``, ``index``), the image normalized with ``input_mean``/``input_std`` (the
    DataModule's); they are renormalized for the encoder.

    Args:
        encoder: the :class:`~lightning_regs.models.FrozenEncoder` name (the paper's DINOv2-reg ViT-B/14 by default;
            ``"efficientnet_lite0"`` is the offline stand-in CNN, not comparable to the paper).
        encoder_weights: ``FrozenEncoder``'s ``weights`` (``"pretrained"``, None for random, or a file).
        encoder_layers: encoder layers read (ViT blocks 2-9 in the paper; e.g. ``[1, 2, 3]`` for the stand-in).
        image_size: ViTs: the input side the position embeddings are built for (392 in the paper).
        num_prototypes: ``M`` (6). num_groups: levels compared (2). num_decoder_blocks: 8. num_heads: None: width/64.
        gamma: the soft-mining exponent (3). coherence_weight: the weight of ``L_c`` (0.2).
        lr, final_lr, warmup_steps: the schedule (1e-3 to 1e-4, 100 warm-up steps, over the run's steps).
        weight_decay, betas, eps, amsgrad: AdamW's (1e-4, (0.9, 0.999), 1e-10, True).
        update_clip: None: ``torch.optim.AdamW``; a number: the official StableAdamW
            (:class:`~lightning_regs.tasks.stable_adamw.StableAdamW`, 1.0 in the official code), whose step on each
            tensor is divided by ``max(1, RMS(g / denominator) / update_clip)``.
        grad_clip_norm: gradient norm clip (0.1); None leaves clipping to the Trainer's ``gradient_clip_val``.
        top_ratio: the image score is the mean of the map's top ``top_ratio`` pixels (0.01; 0: the maximum).
        blur_sigma, blur_kernel_size: the map's Gaussian smoothing (4 and 5, as the official code; sigma None: none).
        input_mean, input_std: the normalization of the batches' images (ImageNet's, the MVTec DataModules').
        pixel_bins: ``AnomalyEvaluation``'s ``pixel_auroc_bins`` (None: exact).
    """

    def __init__(
        self,
        encoder: str = "timm:vit_base_patch14_reg4_dinov2",
        encoder_weights: str | None = "pretrained",
        encoder_layers: list[int] = list(PAPER_LAYERS),  # noqa: B006 (LightningCLI shows the default)
        image_size: int | None = None,
        num_prototypes: int = 6,
        num_groups: int = 2,
        num_decoder_blocks: int = 8,
        num_heads: int | None = None,
        gamma: float = 3.0,
        coherence_weight: float = 0.2,
        lr: float = 1e-3,
        final_lr: float = 1e-4,
        warmup_steps: int = 100,
        weight_decay: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-10,
        amsgrad: bool = True,
        update_clip: float | None = None,
        grad_clip_norm: float | None = 0.1,
        top_ratio: float = 0.01,
        blur_sigma: float | None = 4.0,
        blur_kernel_size: int = 5,
        input_mean: Sequence[float] = IMAGENET_MEAN,
        input_std: Sequence[float] = IMAGENET_STD,
        pixel_bins: int | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.gamma = check_number(owner, "gamma", gamma, low=0.0)
        self.coherence_weight = check_number(owner, "coherence_weight", coherence_weight, low=0.0)
        self.lr = check_number(owner, "lr", lr, low=0.0, low_open=True)
        self.final_lr = check_number(owner, "final_lr", final_lr, low=0.0)
        self.warmup_steps = check_int(owner, "warmup_steps", warmup_steps, low=0)
        self.weight_decay = check_number(owner, "weight_decay", weight_decay, low=0.0)
        if len(betas) != 2:
            raise ValueError(f"{owner}: betas must be two numbers in [0, 1), got {betas!r}.")
        self.betas = tuple(check_number(owner, "betas", b, low=0.0, high=1.0, high_open=True) for b in betas)
        self.eps = check_number(owner, "eps", eps, low=0.0)
        self.amsgrad = check_bool(owner, "amsgrad", amsgrad)
        self.update_clip = check_optional_number(owner, "update_clip", update_clip, low=0.0, low_open=True)
        self.grad_clip_norm = check_optional_number(owner, "grad_clip_norm", grad_clip_norm, low=0.0, low_open=True)
        self.top_ratio = check_number(owner, "top_ratio", top_ratio, low=0.0, high=1.0)
        self.blur_sigma = check_optional_number(owner, "blur_sigma", blur_sigma, low=0.0, low_open=True)
        self.blur_kernel_size = check_int(owner, "blur_kernel_size", blur_kernel_size, low=1)
        self.pixel_bins = None if pixel_bins is None else check_int(owner, "pixel_bins", pixel_bins, low=1)
        for name, values in (("input_mean", input_mean), ("input_std", input_std)):
            if len(values) != 3:
                raise ValueError(f"{owner}: {name} needs 3 values (RGB), got {list(values)}.")
            for value in values:
                check_number(owner, name, value, low=None if name == "input_mean" else 0.0, low_open=True)
        if check_int(owner, "num_decoder_blocks", num_decoder_blocks, low=1) % check_int(
            owner, "num_groups", num_groups, low=1
        ):
            raise ValueError(
                f"{owner}: num_decoder_blocks ({num_decoder_blocks}) must be a multiple of num_groups ({num_groups}): "
                "each level averages an equal share of the decoder blocks (8 and 2 in the paper)."
            )
        self.save_hyperparameters()
        frozen = FrozenEncoder(encoder, layers=list(encoder_layers), weights=encoder_weights, image_size=image_size)
        self.net = INPFormerNetwork(frozen, num_prototypes, num_groups, num_decoder_blocks, num_heads)
        self.register_buffer("input_mean", torch.tensor(list(input_mean), dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer("input_std", torch.tensor(list(input_std), dtype=torch.float32).view(1, 3, 1, 1), False)
        self.setup_anomaly_evaluation(self.pixel_bins)

    # The model.
    @override
    def forward(self, image: torch.Tensor) -> Any:
        """The network's :class:`~lightning_regs.tasks.inp_former_model.INPFormerOutput` for a batch of images."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"INPFormer: expected images (B, 3, H, W), got shape {tuple(image.shape)}.")
        encoder = self.net.encoder
        return self.net(encoder.normalize(image * self.input_std + self.input_mean))

    def losses(self, image: torch.Tensor, with_features: bool = False) -> dict[str, torch.Tensor]:
        """``loss``, ``soft_mining`` and ``coherence`` of a batch of (normal) images (and, with ``with_features``,
        ``features``: the last decoder level, detached)."""
        out = self(image)
        soft_mining = soft_mining_cosine_loss(out.encoder_levels, out.decoder_levels, self.gamma)
        coherence = coherence_loss(out.tokens, out.prototypes)
        terms = {
            "loss": soft_mining + self.coherence_weight * coherence,
            "soft_mining": soft_mining,
            "coherence": coherence,
        }
        if with_features:
            terms["features"] = out.decoder_levels[-1].detach()
        return terms

    @torch.no_grad()
    def score(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps ``(B, 1, H, W)`` at the image's size and image scores ``(B,)``."""
        out = self(image)
        maps = anomaly_map(
            out.encoder_levels, out.decoder_levels, tuple(image.shape[-2:]), self.blur_kernel_size, self.blur_sigma
        )
        return maps, image_score(maps, self.top_ratio)

    # Training.
    @override
    def configure_optimizers(self) -> dict[str, Any]:
        settings = {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay,
                    "amsgrad": self.amsgrad}  # fmt: skip
        if self.update_clip is None:
            optimizer: torch.optim.Optimizer = torch.optim.AdamW(self.net.trainable(), **settings)
        else:
            optimizer = StableAdamW(self.net.trainable(), **settings, clip_threshold=self.update_clip)
        total = int(self.trainer.estimated_stepping_batches)
        schedule = LambdaLR(optimizer, WarmCosine(self.lr, self.final_lr, total, self.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @override
    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: Any = None,
    ) -> None:
        if self.grad_clip_norm is None:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        else:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip_norm, gradient_clip_algorithm="norm")

    @override
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        if LABEL in batch and bool((batch[LABEL] != 0).any()):
            raise ValueError(
                f"INPFormer trains on normal images only, and training batch {batch_idx} holds "
                f"{int((batch[LABEL] != 0).sum())} anomalous ones (label 1). Train on the good training images "
                "(MVTecADDataModule's train split), not on the test set."
            )
        terms = self.losses(batch[IMAGE], with_features=True)
        size = batch[IMAGE].shape[0]
        for name in ("loss", "soft_mining", "coherence"):
            self.log(f"train/{name}", terms[name].detach(), prog_bar=name == "loss", batch_size=size)
        return {"loss": terms["loss"], "features": terms["features"]}  # the decoder's output, for callbacks

    @override
    def anomaly_scores(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps and scores of :meth:`score`, for the shared evaluation steps."""
        return self.score(image)
