"""Generalized category discovery losses: SimGCD's objective and LegoGCD's LER and DKL.

All logits here are *cosine* logits in [-1, 1] (normalized features against normalized prototypes);
the temperatures are tuned for that range and must be re-tuned for unnormalized logits.
Two-view tensors are view-major: rows ``0..B-1`` are the first view of the ``B`` images, rows
``B..2B-1`` the second.

- SimGCD (Wen et al., ICCV 2023): :func:`self_distillation_loss` (the other view, sharpened with the
  :func:`teacher_temperature` schedule), :func:`mean_entropy_maximization`,
  :func:`unsupervised_contrastive_loss`; the supervised terms are cross-entropy and
  :func:`~lightning_regs.functional.supcon.supervised_contrastive_loss` on the labelled rows.
- LegoGCD (Cao et al., CVPR 2024): :func:`local_entropy_regularization` (Eqs. 6-10, with the
  margin-aware prior ``q̂`` kept by :class:`~lightning_regs.tasks.logit_prior.LogitPriorEMA`, state that lives
  beside its user, the LegoGCD mixin) and :func:`dual_view_kl` (Eq. 12).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

__all__ = [
    "dual_view_kl",
    "known_class_mask",
    "local_entropy_regularization",
    "mean_entropy_maximization",
    "self_distillation_loss",
    "teacher_temperature",
    "unsupervised_contrastive_loss",
]


def teacher_temperature(epoch: int, start: float = 0.07, end: float = 0.04, warmup_epochs: int = 30) -> float:
    """SimGCD's teacher temperature: linear from ``start`` at epoch 0 to ``end`` at ``warmup_epochs - 1``, then ``end``.

    Example::

        >>> teacher_temperature(0), round(teacher_temperature(29), 10), teacher_temperature(100)
        (0.07, 0.04, 0.04)
    """
    if epoch >= warmup_epochs - 1 or warmup_epochs <= 1:
        return end
    return start + (end - start) * max(epoch, 0) / (warmup_epochs - 1)


def _wide(tensor: torch.Tensor) -> torch.Tensor:
    # At least float32 (half-precision logits / 0.05 overflow); float64 kept.
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _views(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.dim() != 2 or logits.shape[0] % 2:
        raise ValueError(f"Need view-major logits (2B, K) from two views; got shape {tuple(logits.shape)}.")
    first, second = logits.chunk(2)
    return first, second


def self_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_temp: float,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """Cross-entropy of each view's student against the *other* view's sharpened, detached teacher.

    ``mean over rows and the two (teacher view, student view) pairs of
    -Σ_k softmax(t^u/τ_t)_k · log softmax(s^v/τ_s)_k`` for ``u != v``. In SimGCD the teacher is the
    student's own logits, detached.

    Example::

        >>> logits = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
        >>> float(self_distillation_loss(logits, logits, teacher_temp=0.04)) < 1e-6  # both views agree, confidently
        True
    """
    student_a, student_b = _views(_wide(student_logits) / student_temp)
    target_a, target_b = _views((_wide(teacher_logits.detach()) / teacher_temp).softmax(dim=1))
    loss_ab = -(target_a * student_b.log_softmax(dim=1)).sum(dim=1).mean()
    loss_ba = -(target_b * student_a.log_softmax(dim=1)).sum(dim=1).mean()
    return (loss_ab + loss_ba) / 2


def mean_entropy_maximization(logits: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """``log K - H(mean_i softmax(z_i/τ))``: zero when the batch-mean prediction is uniform, never negative.

    Example::

        >>> round(float(mean_entropy_maximization(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))), 6)
        0.0
    """
    mean_probs = (_wide(logits) / temperature).softmax(dim=1).mean(dim=0)
    return math.log(mean_probs.numel()) + (mean_probs * mean_probs.clamp_min(1e-12).log()).sum()


def unsupervised_contrastive_loss(features: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """InfoNCE over ``2B`` view-major rows: each row's positive is the same image's other view.

    Example::

        >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
        >>> round(float(unsupervised_contrastive_loss(z)), 4)  # -log(e / (e + 2))
        0.5514
    """
    z = F.normalize(_wide(features), dim=1)
    rows = z.shape[0]
    if z.dim() != 2 or rows % 2:
        raise ValueError(f"Need view-major features (2B, D) from two views; got shape {tuple(features.shape)}.")
    logits = (z @ z.T / temperature).masked_fill(torch.eye(rows, dtype=torch.bool, device=z.device), float("-inf"))
    positives = (torch.arange(rows, device=z.device) + rows // 2) % rows
    return F.cross_entropy(logits, positives)


def dual_view_kl(
    logits_a: torch.Tensor, logits_b: torch.Tensor, tau: float = 0.1, form: Literal["kl", "official"] = "kl"
) -> torch.Tensor:
    """LegoGCD's DKL: ``(1/B) Σ_i KL(p^a_i || p^b_i)`` with ``p^v = softmax(z^v/τ)``; gradients reach both views.

    One direction only, as the reference code: not symmetric, never negative, 0 for identical views.
    ``form="official"`` computes what the released code computes instead (``DistillLoss`` in ``model.py``):
    ``Σ p^a·(log_softmax(p^a) − log_softmax(p^b))``, a log-softmax of the *probabilities*, which is
    ``Σ p^a·(p^a − p^b) − (lse(p^a) − lse(p^b))`` and far smaller than the KL of the paper's Eq. 12.

    Example::

        >>> p, q = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.9, 0.1]])
        >>> round(float(dual_view_kl(0.1 * p.log(), 0.1 * q.log())), 4)  # logits whose softmax(z/0.1) is p, q
        0.5108
        >>> round(float(dual_view_kl(0.1 * p.log(), 0.1 * q.log(), form="official")), 4)  # the released code's
        0.078
    """
    if logits_a.shape != logits_b.shape:
        raise ValueError(f"The two views' logits differ in shape: {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}.")
    if form not in ("kl", "official"):
        raise ValueError(f"form must be 'kl' or 'official', got {form!r}.")
    log_p = (_wide(logits_a) / tau).log_softmax(dim=1)
    log_q = (_wide(logits_b) / tau).log_softmax(dim=1)
    if form == "official":
        p, q = log_p.exp(), log_q.exp()
        return (p * (p.log_softmax(dim=1) - q.log_softmax(dim=1))).sum(dim=1).mean()
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def known_class_mask(known: int | Sequence[int] | torch.Tensor, num_classes: int) -> torch.Tensor:
    """Boolean ``(num_classes,)`` mask of the known head indices: the first ``known`` if an int, else those ids.

    Example::

        >>> known_class_mask(2, 4).tolist(), known_class_mask([3, 0], 4).tolist()
        ([True, True, False, False], [True, False, False, True])
    """
    mask = torch.zeros(num_classes, dtype=torch.bool)
    if isinstance(known, int):
        mask[:known] = True
    else:
        mask[torch.as_tensor(known, dtype=torch.long)] = True
    return mask


def local_entropy_regularization(
    logits: torch.Tensor,
    labelled_mask: torch.Tensor,
    known: int | Sequence[int] | torch.Tensor,
    threshold: float,
    tau_conf: float = 0.1,
    tau_o: float = 0.05,
    prior: torch.Tensor | None = None,
    lambda_ler: float = 0.4,
) -> torch.Tensor:
    """LegoGCD's LER with the margin-aware prior (MAP): entropy minimization on confident known-class rows.

    Selected rows ``o_i = [row unlabelled]·[max softmax(z_i/τ_conf) ≥ δ]·[argmax z_i is a known class]``;
    ``L = (1/N) Σ_i o_i Σ_k -softmax(z_i/τ_o)_k · log softmax(z_i/τ_o + λ·log q̂)_k`` over all ``N`` rows
    (not the selected ones), the target softmax *not* detached, as the reference code. Without ``prior``
    (or with a uniform one, a constant logit shift) it is the masked entropy of ``softmax(z_i/τ_o)``.
    The paper's Eqs. 9-10 carry a minus sign; the code minimizes +H (sharpening), and so does this.

    Args:
        logits: ``(N, K)`` cosine logits (all views' rows).
        labelled_mask: ``(N,)`` bool, rows whose label the method may use.
        known: the known classes' head indices (an int ``k``: the first ``k``; any ids otherwise).
        threshold: δ (CUB 0.7, SCars 0.85, Aircraft 0.9, CIFAR-10 0.95, CIFAR-100 0.85, IN-100 0.8).
        tau_conf: temperature of the confidence test.
        tau_o: temperature of the entropy.
        prior: ``q̂`` ``(K,)``, the EMA of the mean prediction
            (:class:`~lightning_regs.tasks.logit_prior.LogitPriorEMA`); ``None``: no MAP.
        lambda_ler: λ, the weight of ``log q̂``.

    Example::

        >>> logits = torch.tensor([[0.9, -0.9], [0.0, 0.0]])
        >>> labelled = torch.tensor([False, False])
        >>> float(local_entropy_regularization(logits, labelled, known=1, threshold=0.7)) < 1e-6  # only row 0
        True
        >>> float(local_entropy_regularization(logits, torch.tensor([True, False]), known=1, threshold=0.7))
        0.0
    """
    if logits.dim() != 2 or labelled_mask.shape != logits.shape[:1]:
        raise ValueError(
            f"Need logits (N, K) and labelled_mask (N,); got {tuple(logits.shape)}, {tuple(labelled_mask.shape)}."
        )
    logits = _wide(logits)
    with torch.no_grad():
        confidence, predicted = (logits / tau_conf).softmax(dim=1).max(dim=1)
        known_head = known_class_mask(known, logits.shape[1]).to(logits.device)
        selected = ~labelled_mask.bool() & (confidence >= threshold) & known_head[predicted]
    scaled = logits / tau_o
    target = scaled.softmax(dim=1)
    shifted = scaled if prior is None else scaled + lambda_ler * prior.to(scaled).clamp_min(1e-12).log()
    per_row = -(target * shifted.log_softmax(dim=1)).sum(dim=1)
    # Multiplying (not indexing) keeps unselected rows at exactly zero loss and zero gradient.
    return (per_row * selected.to(per_row)).sum() / logits.shape[0]


def __getattr__(name: str) -> Any:
    """``LogitPriorEMA`` moved beside its user (:mod:`lightning_regs.tasks.logit_prior`); the old path still works."""
    if name == "LogitPriorEMA":
        from lightning_regs.tasks.logit_prior import LogitPriorEMA

        return LogitPriorEMA
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
