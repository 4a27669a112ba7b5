"""LegoGCD's two terms for any GCD LightningModule: LER with the margin-aware prior ``q̂``, and DKL.

Both are :class:`~lightning_regs.tasks.LossTerm` modules: :class:`LocalEntropyTerm` (which owns ``q̂``) and
:class:`DualViewKLTerm`. :class:`LegoGCDMixin` builds them in ``setup_lego_gcd``; its four methods are thin
wrappers over them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from typing_extensions import override

from lightning_regs.batch import LABELED, unpack_batch
from lightning_regs.functional._checks import check_bool, check_int, check_int_ids, check_number
from lightning_regs.functional.lego_gcd import dual_view_kl, local_entropy_regularization
from lightning_regs.tasks.logit_prior import LogitPriorEMA
from lightning_regs.tasks.loss_terms import LossTerm
from lightning_regs.trusted_loading import TrustedCheckpointLoading

__all__ = ["DualViewKLTerm", "LegoGCDMixin", "LegoGCDSettings", "LocalEntropyTerm"]


def _view_major_logits(outputs: Mapping[str, torch.Tensor], term: str) -> torch.Tensor:
    logits = outputs["logits"]
    if logits.dim() != 2 or logits.shape[0] % 2:
        raise ValueError(
            f"LegoGCD's {term} reads view-major logits (2B, K) of two views (the first view's B rows, then the "
            f"second's); got outputs['logits'] of shape {tuple(logits.shape)}."
        )
    return logits


def _labelled_rows(batch: Any, rows: int) -> torch.Tensor:
    """The ``(rows,)`` labelled mask: ``batch["labeled"]`` (else ``target >= 0``), per image or per logit row."""
    labelled = batch[LABELED] if isinstance(batch, Mapping) and LABELED in batch else unpack_batch(batch)[1] >= 0
    labelled = labelled.bool()
    if labelled.dim() == 1 and 2 * len(labelled) == rows:
        labelled = labelled.repeat(2)  # one flag per image, the same for both views (view-major rows)
    if labelled.shape != (rows,):
        raise ValueError(
            f"LegoGCD's LER needs one labelled flag per image or per logit row ({rows} rows); got a mask of shape "
            f"{tuple(labelled.shape)}."
        )
    return labelled


class LocalEntropyTerm(LossTerm):
    """LegoGCD's LER (local entropy regularization, Cao et al., CVPR 2024) with the margin-aware prior ``q̂``.

    ``forward(outputs, batch)`` is :func:`~lightning_regs.functional.local_entropy_regularization` of the
    view-major cosine logits ``outputs["logits"]`` ``(2B, K)``, the labelled rows read from ``batch["labeled"]``
    (else ``target >= 0``; one flag per image or per row). The term owns ``q̂``, the buffer ``prior_ema.prior``;
    :meth:`update` folds the batch-mean prediction into it, averaged over ranks first (:meth:`update_prior`), so
    every rank keeps the same ``q̂`` under DDP and FSDP2.

    Args:
        num_classes: ``K_old + K_new``, the width of the logits.
        known_classes: the known ("Old") classes' ids, in any order.
        weight: β (2 on CUB, 1 on CIFAR-100).
        threshold: δ (CUB 0.7, SCars 0.85, Aircraft 0.9, CIFAR-10 0.95, CIFAR-100 0.85, IN-100 0.8).
        prior: the margin-aware prior ``q̂`` (LegoGCD's final version); False: plain masked entropy (``q̂`` is
            still kept up to date).
        lambda_ler: λ, the weight of ``log q̂`` (0.4).
        prior_momentum: the EMA momentum of ``q̂`` (0.999).
        name: the term's name (``"ler"``).

    Example::

        >>> term = LocalEntropyTerm(num_classes=4, known_classes=[0, 1], threshold=0.3)
        >>> logits = torch.tensor([[0.9, -0.9, 0.0, 0.0], [0.0, 0.1, 0.2, 0.3]]).repeat(2, 1)  # 2 images, 2 views
        >>> outputs, batch = {"logits": logits}, {"labeled": torch.tensor([False, True])}
        >>> bool(term(outputs, batch) > 0), sorted(term.state_dict())
        (True, ['prior_ema.prior'])
        >>> term.update(outputs, batch)
        >>> bool(term.prior_ema.prior[0] > 0.25)  # q̂ moved towards the batch's mean prediction
        True
    """

    def __init__(
        self,
        num_classes: int,
        known_classes: Sequence[int],
        *,
        weight: float = 2.0,
        threshold: float = 0.7,
        prior: bool = True,
        lambda_ler: float = 0.4,
        prior_momentum: float = 0.999,
        name: str = "ler",
    ) -> None:
        super().__init__(name, weight)
        known = tuple(check_int_ids("LocalEntropyTerm", "known_classes", known_classes, low=0, high=num_classes - 1))
        if not 0 <= threshold <= 1:
            raise ValueError(f"LER's threshold δ must lie in [0, 1], got {threshold}.")
        self.known_classes = known
        self.threshold = threshold
        self.use_prior = prior
        self.lambda_ler = lambda_ler
        self.prior_ema = LogitPriorEMA(num_classes, prior_momentum)

    @override
    def forward(self, outputs: Mapping[str, torch.Tensor], batch: Any) -> torch.Tensor:
        logits = _view_major_logits(outputs, "LER")
        return local_entropy_regularization(
            logits,
            _labelled_rows(batch, len(logits)),
            self.known_classes,
            self.threshold,
            prior=self.prior_ema.prior if self.use_prior else None,
            lambda_ler=self.lambda_ler,
        )

    @torch.no_grad()
    @override
    def update(self, outputs: Mapping[str, torch.Tensor], batch: Any) -> None:
        self.update_prior(outputs["logits"])

    @torch.no_grad()
    def update_prior(self, logits: torch.Tensor) -> torch.Tensor:
        """Fold the batch-mean ``softmax(logits)``, averaged over ranks, into ``q̂``; returns ``q̂``."""
        mean = logits.detach().float().softmax(dim=1).mean(dim=0)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(mean)
            mean /= dist.get_world_size()
        return self.prior_ema.update(mean)


class DualViewKLTerm(LossTerm):
    """LegoGCD's DKL: :func:`~lightning_regs.functional.dual_view_kl` of the two views of ``outputs["logits"]``.

    Args:
        weight: ``w_dkl`` (1 in LegoGCD; :class:`LegoGCDMixin` puts it inside SimGCD's unsupervised term).
        form: ``"kl"``, the KL of the paper's Eq. 12, or ``"official"``, what the released code computes.
        tau: the temperature of both views' softmax (0.1).
        name: the term's name (``"dkl"``).

    Example::

        >>> logits = torch.tensor([[0.5, 0.0], [0.0, 0.5]])  # one image, two views that disagree
        >>> round(float(DualViewKLTerm()({"logits": logits}, batch=None)), 4)
        4.9331
    """

    def __init__(
        self, *, weight: float = 1.0, form: Literal["kl", "official"] = "kl", tau: float = 0.1, name: str = "dkl"
    ) -> None:
        super().__init__(name, weight)
        if form not in ("kl", "official"):
            raise ValueError(f"form must be 'kl' or 'official', got {form!r}.")
        self.form = form
        self.tau = tau

    @override
    def forward(self, outputs: Mapping[str, torch.Tensor], batch: Any) -> torch.Tensor:
        return dual_view_kl(*_view_major_logits(outputs, "DKL").chunk(2), tau=self.tau, form=self.form)


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


class LegoGCDMixin(TrustedCheckpointLoading, pl.LightningModule):
    """Add LegoGCD to a GCD LightningModule: ``setup_lego_gcd`` in ``__init__``, ``lego_gcd_loss`` in ``training_step``.

    ``setup_lego_gcd`` builds LER and DKL as :class:`~lightning_regs.tasks.LossTerm` modules
    (:attr:`lego_gcd_loss_terms`: a :class:`LocalEntropyTerm` ``"ler"`` and a :class:`DualViewKLTerm` ``"dkl"``).
    ``q̂`` (the LER prior), owned by the LER term, is registered on the module as ``prior_ema``: the buffer
    ``prior_ema.prior``, saved in checkpoints under that key (the terms are not registered, so ``q̂`` is
    saved once). Its update averages the batch-mean prediction over ranks first, so every rank keeps the same
    ``q̂`` under DDP and FSDP2 (the official code runs its ``q̂`` on one GPU only; its DDP script has none). Logits
    are cosine logits of the two views in view-major order (``2B`` rows: the first view's ``B`` rows, then the
    second's); ``labelled`` marks the rows whose label is used.

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
        >>> model.lego_gcd_loss_terms["ler"].prior_ema is model.prior_ema, list(model.state_dict())
        (True, ['prior_ema.prior'])
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
        """Build LegoGCD's LER and DKL terms, register ``q̂`` (as ``prior_ema``) and keep LegoGCD's choices.

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
        owner = type(self).__name__
        check_int(owner, "num_classes", num_classes, low=1)
        known = tuple(check_int_ids(owner, "known_classes", known_classes, low=0, high=num_classes - 1))
        for name, value in (("ler_weight", ler_weight), ("dkl_weight", dkl_weight), ("ler_lambda", ler_lambda)):
            check_number(owner, name, value, low=0)
        check_number(owner, "ler_threshold (δ)", ler_threshold, low=0, high=1)
        check_number(owner, "prior_momentum", prior_momentum, low=0, high=1, high_open=True)
        check_bool(owner, "ler_prior", ler_prior)
        if preset not in ("library", "official"):
            raise ValueError(f"preset must be 'library' or 'official', got {preset!r}.")
        if ler_weight < 0 or dkl_weight < 0 or not 0 <= ler_threshold <= 1:
            raise ValueError(
                f"Need ler_weight >= 0, dkl_weight >= 0 and 0 <= ler_threshold <= 1; got {ler_weight}, {dkl_weight}, "
                f"{ler_threshold}."
            )
        ler = LocalEntropyTerm(
            num_classes, known, weight=ler_weight, threshold=ler_threshold, prior=ler_prior, lambda_ler=ler_lambda,
            prior_momentum=prior_momentum,
        )  # fmt: skip
        dkl = DualViewKLTerm(weight=dkl_weight, form="official" if preset == "official" else "kl")
        # A plain dict, not registered: q̂ is registered once, below, as prior_ema (its checkpoint key).
        self._lego_gcd_loss_terms: dict[str, LossTerm] = {"ler": ler, "dkl": dkl}
        self.prior_ema = ler.prior_ema
        self.lego_gcd = LegoGCDSettings(known, ler_weight, ler_threshold, ler_prior, ler_lambda, dkl_weight, preset)

    @property
    def lego_gcd_loss_terms(self) -> dict[str, LossTerm]:
        """LegoGCD's terms, ``{"ler": LocalEntropyTerm, "dkl": DualViewKLTerm}`` (LER's ``q̂`` is ``prior_ema``)."""
        return dict(self._lego_gcd_loss_terms)

    def lego_gcd_weights(self) -> dict[str, float]:
        """``{"ler": β, "dkl": w_dkl}``: each term's ``current_weight`` at the module's global step and epoch."""
        step, epoch = self.global_step, self.current_epoch
        return {name: term.current_weight(step, epoch) for name, term in self._lego_gcd_loss_terms.items()}

    def lego_gcd_terms(self, logits: torch.Tensor, labelled: torch.Tensor) -> dict[str, torch.Tensor]:
        """LER (with the current ``q̂``) and DKL of view-major ``logits`` ``(2B, K)``, unweighted (0 when off)."""
        zero = logits.sum() * 0.0
        outputs, batch = {"logits": logits}, {LABELED: labelled}
        return {name: term(outputs, batch) if term.weight else zero for name, term in self._lego_gcd_loss_terms.items()}

    @torch.no_grad()
    def update_logit_prior(self, logits: torch.Tensor) -> torch.Tensor:
        """Fold the batch-mean ``softmax(logits)``, averaged over ranks, into ``q̂``; returns ``q̂``."""
        ler = self._lego_gcd_loss_terms["ler"]
        assert isinstance(ler, LocalEntropyTerm)
        return ler.update_prior(logits)

    def lego_gcd_loss(
        self, logits: torch.Tensor, labelled: torch.Tensor, unsupervised_weight: float = 0.65
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``β·L_LER + unsupervised_weight·w_dkl·L_DKL`` to add to your GCD loss, then update ``q̂``.

        ``unsupervised_weight`` is what multiplies SimGCD's unsupervised term, ``1 − λ_sup`` (0.65): LegoGCD adds
        DKL inside it. Returns the weighted sum and the unweighted terms (to log).
        """
        terms = self.lego_gcd_terms(logits, labelled)
        weights = self.lego_gcd_weights()
        loss = weights["ler"] * terms["ler"] + unsupervised_weight * weights["dkl"] * terms["dkl"]
        self.update_logit_prior(logits)
        return loss, terms
