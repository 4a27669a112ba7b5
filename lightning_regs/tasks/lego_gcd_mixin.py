"""LegoGCD's two terms for any GCD LightningModule: LER with the margin-aware prior ``q̂``, and DKL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import lightning.pytorch as pl
import torch
import torch.distributed as dist

from lightning_regs.functional.lego_gcd import LogitPriorEMA, dual_view_kl, local_entropy_regularization

__all__ = ["LegoGCDMixin", "LegoGCDSettings"]


@dataclass(frozen=True)
class LegoGCDSettings:
    """LegoGCD's choices (Cao et al., CVPR 2024; CUB's values by default). See :meth:`LegoGCDMixin.setup_lego_gcd`."""

    known_classes: tuple[int, ...]
    ler_weight: float = 2.0
    ler_threshold: float = 0.7
    ler_prior: bool = True
    ler_lambda: float = 0.4
    dkl_weight: float = 1.0
    preset: Literal["library", "official"] = "library"


class LegoGCDMixin(pl.LightningModule):
    """Add LegoGCD to a GCD LightningModule: ``setup_lego_gcd`` in ``__init__``, ``lego_gcd_loss`` in ``training_step``.

    ``q̂`` (the LER prior) is the buffer ``prior_ema.prior``, saved in checkpoints; its update averages the
    batch-mean prediction over ranks first, so every rank keeps the same ``q̂`` under DDP and FSDP2 (the official
    code runs its ``q̂`` on one GPU only; its DDP script has none). Logits are cosine logits of the two views in
    view-major order (``2B`` rows: the first view's ``B`` rows, then the second's); ``labelled`` marks the rows
    whose label is used.

    Example::

        >>> import torch
        >>> class MyGCD(LegoGCDMixin):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.setup_lego_gcd(num_classes=4, known_classes=[0, 1])
        >>> model = MyGCD()
        >>> logits = torch.tensor([[0.9, -0.9, 0.0, 0.0], [0.0, 0.1, 0.2, 0.3]]).repeat(2, 1)  # 2 images, 2 views
        >>> loss, terms = model.lego_gcd_loss(logits, torch.tensor([False, True]).repeat(2), unsupervised_weight=0.65)
        >>> sorted(terms), bool(model.prior_ema.prior[0] > 0.25)  # q̂ moved towards the batch's mean prediction
        (['dkl', 'ler'], True)
    """

    prior_ema: LogitPriorEMA
    lego_gcd: LegoGCDSettings

    def setup_lego_gcd(
        self,
        num_classes: int,
        known_classes: Sequence[int],
        *,
        ler_weight: float = 2.0,
        ler_threshold: float = 0.7,
        ler_prior: bool = True,
        ler_lambda: float = 0.4,
        prior_momentum: float = 0.999,
        dkl_weight: float = 1.0,
        preset: Literal["library", "official"] = "library",
    ) -> None:
        """Register ``q̂`` and keep LegoGCD's choices.

        Args:
            num_classes: ``K_old + K_new``, the width of the logits.
            known_classes: the known ("Old") classes' ids, in any order.
            ler_weight: β (2 on CUB, 1 on CIFAR-100); 0 turns LER off.
            ler_threshold: δ (CUB 0.7, SCars 0.85, Aircraft 0.9, CIFAR-10 0.95, CIFAR-100 0.85, IN-100 0.8).
            ler_prior: the margin-aware prior ``q̂`` (LegoGCD's final version); False: plain masked entropy.
            ler_lambda: λ, the weight of ``log q̂`` (0.4).
            prior_momentum: the EMA momentum of ``q̂`` (0.999).
            dkl_weight: the dual-view KL's weight inside the unsupervised term (1); 0 turns it off.
            preset: ``"library"`` (default): DKL is the KL of the paper's Eq. 12; ``"official"``: DKL is what the
                released code computes (``dual_view_kl(form="official")``, a log-softmax of the probabilities).
        """
        known = tuple(int(c) for c in known_classes)
        if not known or len(set(known)) != len(known) or not all(0 <= c < num_classes for c in known):
            raise ValueError(f"known_classes must be distinct ids in [0, {num_classes}); got {known_classes}.")
        if preset not in ("library", "official"):
            raise ValueError(f"preset must be 'library' or 'official', got {preset!r}.")
        if ler_weight < 0 or dkl_weight < 0 or not 0 <= ler_threshold <= 1:
            raise ValueError(
                f"Need ler_weight >= 0, dkl_weight >= 0 and 0 <= ler_threshold <= 1; got {ler_weight}, {dkl_weight}, "
                f"{ler_threshold}."
            )
        self.prior_ema = LogitPriorEMA(num_classes, prior_momentum)
        self.lego_gcd = LegoGCDSettings(known, ler_weight, ler_threshold, ler_prior, ler_lambda, dkl_weight, preset)

    def lego_gcd_terms(self, logits: torch.Tensor, labelled: torch.Tensor) -> dict[str, torch.Tensor]:
        """LER (with the current ``q̂``) and DKL of view-major ``logits`` ``(2B, K)``, unweighted (0 when off)."""
        settings = self.lego_gcd
        zero = logits.sum() * 0.0
        ler = zero
        if settings.ler_weight:
            prior = self.prior_ema.prior if settings.ler_prior else None
            ler = local_entropy_regularization(
                logits, labelled, settings.known_classes, settings.ler_threshold, prior=prior,
                lambda_ler=settings.ler_lambda,
            )  # fmt: skip
        form = "official" if settings.preset == "official" else "kl"
        dkl = dual_view_kl(*logits.chunk(2), form=form) if settings.dkl_weight else zero
        return {"ler": ler, "dkl": dkl}

    @torch.no_grad()
    def update_logit_prior(self, logits: torch.Tensor) -> torch.Tensor:
        """Fold the batch-mean ``softmax(logits)``, averaged over ranks, into ``q̂``; returns ``q̂``."""
        mean = logits.detach().float().softmax(dim=1).mean(dim=0)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(mean)
            mean /= dist.get_world_size()
        return self.prior_ema.update(mean)

    def lego_gcd_loss(
        self, logits: torch.Tensor, labelled: torch.Tensor, unsupervised_weight: float = 0.65
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``β·L_LER + unsupervised_weight·w_dkl·L_DKL`` to add to your GCD loss, then update ``q̂``.

        ``unsupervised_weight`` is what multiplies SimGCD's unsupervised term, ``1 − λ_sup`` (0.65): LegoGCD adds
        DKL inside it. Returns the weighted sum and the unweighted terms (to log).
        """
        terms = self.lego_gcd_terms(logits, labelled)
        settings = self.lego_gcd
        loss = settings.ler_weight * terms["ler"] + unsupervised_weight * settings.dkl_weight * terms["dkl"]
        self.update_logit_prior(logits)
        return loss, terms
