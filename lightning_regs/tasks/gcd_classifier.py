"""Generalized category discovery: a SimGCD-style task with LegoGCD's LER and DKL as switches."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from lightning_regs._compat import attached_trainer
from lightning_regs.batch import IMAGE, INDEX, LABELED, TARGET, TRUE_TARGET
from lightning_regs.functional._checks import check_int, check_int_ids, check_number
from lightning_regs.functional.gcd import gcd_accuracy, gcd_accuracy_balanced, gcd_accuracy_v1
from lightning_regs.functional.lego_gcd import (
    mean_entropy_maximization,
    self_distillation_loss,
    teacher_temperature,
    unsupervised_contrastive_loss,
)
from lightning_regs.functional.outputs import describe_output
from lightning_regs.functional.supcon import supervised_contrastive_loss
from lightning_regs.tasks.gcd_evaluation import GCDEvaluationRows
from lightning_regs.tasks.lego_gcd_mixin import LegoGCDMixin
from lightning_regs.tasks.optim import WarmupSchedule, build_optimizer
from lightning_regs.tasks.settings import own_settings
from lightning_regs.tasks.sharding import shard_under_model_parallel

__all__ = ["GCDClassifier", "ProjectionHead"]

_TRAINING_BATCH = (
    f"a dict batch with '{IMAGE}' (B, 2, C, H, W): two augmented views of each image, '{TARGET}' (B,): class ids "
    f"with -1 on the unlabelled rows, and optionally '{LABELED}' (B,) bool (else target >= 0), '{INDEX}' and "
    f"'{TRUE_TARGET}' (every row's real class, for evaluation); or an (image, target) pair of those two"
)
_FROM_YOUR_DATA = (
    "From your own (x, y) tensors, `train = lightning_regs.datamodules.GCDDataset(x, y, known_classes=[...], "
    "augment=your_augmentation)` labels part of each known class, marks every other image unlabelled and gives two "
    "views per image: fit on `DataLoader(train, batch_size=..., shuffle=True)` and validate on "
    "`DataLoader(train.evaluation_set(), ...)` (docs/methods/lego_gcd.md, 'Your own data')"
)


def _training_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(image, target, labelled)`` of a GCD training batch; a named error for any other batch."""
    if isinstance(batch, Mapping) and IMAGE in batch and TARGET in batch:
        image, target = batch[IMAGE], batch[TARGET]
        labelled = batch[LABELED].bool() if LABELED in batch else target >= 0
    elif isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch):
        image, target = batch
        labelled = target >= 0
    else:
        raise TypeError(f"GCDClassifier trains on {_TRAINING_BATCH}; got {describe_output(batch)}. {_FROM_YOUR_DATA}.")
    if image.dim() != 5 or image.shape[1] != 2:
        raise ValueError(
            f"GCDClassifier trains on two views per image, batch['{IMAGE}'] of shape (B, 2, C, H, W); got "
            f"{tuple(image.shape)}. Wrap the training transform in lightning_regs.datamodules.views.TwoViews. "
            f"{_FROM_YOUR_DATA}."
        )
    return image, target, labelled


def _check_labelled_rows(labels: torch.Tensor, known_classes: Sequence[int]) -> None:
    """A labelled row must be of a known class: a labelled novel class would be trained on as if it were known."""
    if not labels.numel():
        return
    known = torch.as_tensor(list(known_classes), device=labels.device)
    stray = labels[~torch.isin(labels, known)]
    if stray.numel():
        raise ValueError(
            f"GCDClassifier: a training batch has labelled rows of classes {sorted(set(stray.tolist()))}, not "
            f"in known_classes={list(known_classes)}: GCD labels only known classes (novel ones are discovered). "
            f"Mark those rows unlabelled (target -1, labeled False), or add the classes to known_classes. "
            f"{_FROM_YOUR_DATA}."
        )


def _evaluation_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(image, truth, index or None)`` of a GCD evaluation batch; a named error for any other batch."""
    if isinstance(batch, Mapping) and IMAGE in batch and (TRUE_TARGET in batch or TARGET in batch):
        truth = batch[TRUE_TARGET] if TRUE_TARGET in batch else batch[TARGET]
        return batch[IMAGE], truth, batch.get(INDEX)
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch):
        return batch[0], batch[1], None
    raise TypeError(
        f"GCDClassifier evaluates on a dict batch with '{IMAGE}' and '{TARGET}' (or '{TRUE_TARGET}'): every image "
        f"and its real class, or an (image, class) pair; got {describe_output(batch)}. {_FROM_YOUR_DATA}."
    )


class ProjectionHead(nn.Sequential):
    """SimGCD's projection MLP: ``layers - 1`` Linear-GELU blocks of ``hidden`` units, then a linear map to ``out``.

    Example::

        >>> ProjectionHead(8, hidden=16, out=4)(torch.zeros(2, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(self, in_features: int, hidden: int = 2048, out: int = 256, layers: int = 3) -> None:
        sizes = [in_features] + [hidden] * (layers - 1)
        blocks: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            blocks += [nn.Linear(a, b), nn.GELU()]
        super().__init__(*blocks, nn.Linear(sizes[-1], out))


class GCDClassifier(LegoGCDMixin):
    """SimGCD (Wen et al., ICCV 2023) with LegoGCD (Cao et al., CVPR 2024): find new classes in unlabelled images.

    ``backbone`` maps images to ``(B, feature_dim)`` features. A cosine prototype classifier gives
    logits ``cos(h_i, c_k)`` over ``num_known + num_novel`` classes and a :class:`ProjectionHead`
    gives the contrastive embedding. A training batch holds two augmented views per image,
    ``image`` of shape ``(B, 2, C, H, W)`` (:class:`~lightning_regs.datamodules.views.TwoViews`), ``target``
    (``-1`` for unlabelled rows) and ``labeled`` (else ``target >= 0``); an ``(image, target)`` pair of those also
    works, any other batch is a named error. :class:`~lightning_regs.datamodules.GCDDataset` makes such rows of your
    own ``(x, y)``. The loss, on the ``2B`` view-major rows:

    ``(1 - λ)·(L_distill + w_me·L_me-max + w_dkl·L_DKL + L_infoNCE) + λ·(L_CE + L_SupCon) + β·L_LER``

    with λ = ``sup_weight``; CE and SupCon on the labelled rows only. LegoGCD's defaults are on
    (``ler_weight=2``, ``dkl_weight=1``); ``ler_weight=0, dkl_weight=0`` is SimGCD. The LegoGCD terms come from
    :class:`~lightning_regs.tasks.LegoGCDMixin` (:class:`~lightning_regs.tasks.LossTerm` modules, with their
    weights): ``q̂`` (the LER prior) is a buffer, saved in checkpoints under ``prior_ema.prior``; under
    DDP its batch mean is averaged over ranks so every rank keeps the same ``q̂``. The teacher temperature
    follows the epoch, so a resumed run continues the schedule.

    Evaluation (validation and test) predicts the arg-max cluster of each image, gathers
    ``(index, prediction, class)`` from every rank (padded duplicates dropped) and scores All/Old/New
    with one Hungarian matching (v2, logged ``gcd/all``, ``gcd/old``, ``gcd/new``; test:
    ``gcd/test_all`` ...), plus ``gcd/v1_*`` and the per-class ``gcd/v2b_*``. Old/New is by class id, so
    the known classes may have any ids (``known_classes``). The ground truth is ``true_target`` when the
    batch has it, else ``target``. With CUB's GCD mode, validation runs on the unlabelled training
    images: the transductive protocol the papers report.

    Args:
        backbone: any module returning ``(B, feature_dim)`` features (e.g. a DINO ViT-B/16 with its head removed).
        feature_dim: the backbone's feature size.
        num_known: known ("Old") classes.
        num_novel: novel ("New") classes.
        known_classes: the known classes' ids; default ``0..num_known-1`` (CUB's GCD mode).
        sup_weight: λ, SimGCD's supervised weight (0.35).
        memax_weight: mean-entropy maximization weight (2 on CUB and CIFAR-100, 1 elsewhere).
        student_temp: student temperature (0.1).
        teacher_temp_start: teacher temperature at epoch 0 (0.07).
        teacher_temp: teacher temperature after the warm-up (0.04).
        teacher_warmup_epochs: warm-up length (30).
        supcon_temperature: supervised contrastive temperature (0.07).
        infonce_temperature: unsupervised contrastive temperature (1.0).
        ler_weight: β, LegoGCD's LER weight (2 on CUB; 1 on CIFAR-100); 0 disables LER.
        ler_threshold: δ (CUB 0.7, SCars 0.85, Aircraft 0.9, CIFAR-10 0.95, CIFAR-100 0.85, IN-100 0.8).
        ler_prior: use the margin-aware prior ``q̂`` (LegoGCD's final version).
        ler_lambda: λ_ler, the weight of ``log q̂`` (0.4).
        prior_momentum: the EMA momentum of ``q̂`` (0.999).
        dkl_weight: weight of the dual-view KL inside the unsupervised term (1 in LegoGCD); 0 disables it.
        preset: ``"library"`` (the KL of the paper's Eq. 12) or ``"official"`` (DKL as the released code computes
            it: see :meth:`~lightning_regs.tasks.LegoGCDMixin.setup_lego_gcd`).
        proj_hidden: projection head width (2048).
        proj_dim: projection output size (256).
        proj_layers: projection head depth (3).
        lr: SGD learning rate (0.1), cosine-annealed per step to ``lr * 1e-3``.
        momentum: SGD momentum (0.9).
        weight_decay: weight decay (5e-5).

    Example::

        >>> backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, 8))
        >>> task = GCDClassifier(backbone, feature_dim=8, num_known=2, num_novel=2, proj_hidden=16, proj_dim=4)
        >>> batch = {"image": torch.randn(4, 2, 1, 4, 4), "target": torch.tensor([0, 1, -1, -1])}
        >>> out = task.training_step(batch, 0)
        >>> sorted(out), out["logits"].shape
        (['logits', 'loss'], torch.Size([8, 4]))
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_known: int,
        num_novel: int,
        known_classes: Sequence[int] | None = None,
        sup_weight: float = 0.35,
        memax_weight: float = 2.0,
        student_temp: float = 0.1,
        teacher_temp_start: float = 0.07,
        teacher_temp: float = 0.04,
        teacher_warmup_epochs: int = 30,
        supcon_temperature: float = 0.07,
        infonce_temperature: float = 1.0,
        ler_weight: float = 2.0,
        ler_threshold: float = 0.7,
        ler_prior: bool = True,
        ler_lambda: float = 0.4,
        prior_momentum: float = 0.999,
        dkl_weight: float = 1.0,
        preset: Literal["library", "official"] = "library",
        proj_hidden: int = 2048,
        proj_dim: int = 256,
        proj_layers: int = 3,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-5,
    ) -> None:
        super().__init__()
        owner = "GCDClassifier"
        check_int(owner, "feature_dim", feature_dim, low=1)
        check_int(owner, "num_known", num_known, low=1)
        check_int(owner, "num_novel", num_novel, low=0)
        num_classes = num_known + num_novel
        known = (
            list(range(num_known))
            if known_classes is None
            else check_int_ids(owner, "known_classes", known_classes, low=0, high=num_classes - 1)
        )
        if len(known) != num_known:
            raise ValueError(f"{owner}: known_classes must hold num_known={num_known} ids; got {known_classes!r}.")
        check_number(owner, "sup_weight (λ)", sup_weight, low=0, high=1)
        for name, value in (
            ("student_temp", student_temp), ("teacher_temp_start", teacher_temp_start),
            ("teacher_temp", teacher_temp), ("supcon_temperature", supcon_temperature),
            ("infonce_temperature", infonce_temperature),
        ):  # fmt: skip
            check_number(owner, name, value, low=0, low_open=True)
        for name, value in (
            ("memax_weight", memax_weight), ("ler_lambda", ler_lambda), ("weight_decay", weight_decay), ("lr", lr),
        ):  # fmt: skip
            check_number(owner, name, value, low=0)
        check_number(owner, "momentum", momentum, low=0, high=1, high_open=True)
        check_int(owner, "teacher_warmup_epochs", teacher_warmup_epochs, low=0)
        for name, value in (("proj_hidden", proj_hidden), ("proj_dim", proj_dim), ("proj_layers", proj_layers)):
            check_int(owner, name, value, low=1)
        self.save_hyperparameters(ignore=["backbone"])
        if "_instantiator" in self.hparams:
            self.save_hyperparameters()
        # What the task reads (hparams under LightningCLI hold a subclass's own arguments instead).
        self.task_settings = own_settings(GCDClassifier.__init__, locals(), exclude=("backbone",))
        self.backbone = backbone
        self.num_classes = num_classes
        self.prototypes = nn.Parameter(F.normalize(torch.randn(num_classes, feature_dim), dim=1))
        self.projection = ProjectionHead(feature_dim, proj_hidden, proj_dim, proj_layers)
        self.setup_lego_gcd(
            num_classes, known, ler_weight=ler_weight, ler_threshold=ler_threshold, ler_prior=ler_prior,
            ler_lambda=ler_lambda, prior_momentum=prior_momentum, dkl_weight=dkl_weight, preset=preset,
        )  # fmt: skip
        # the rows scored at the end of each evaluation epoch (torchmetrics states: not in the state dict)
        self.evaluation_rows = nn.ModuleDict({"val": GCDEvaluationRows(), "test": GCDEvaluationRows()})

    @property
    def known_classes(self) -> list[int]:
        """The known ("Old") classes' ids (kept by :class:`~lightning_regs.tasks.LegoGCDMixin`)."""
        return list(self.lego_gcd.known_classes)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """The backbone's features, flattened to ``(B, feature_dim)``."""
        return self.backbone(image).flatten(1)

    def cosine_logits(self, features: torch.Tensor) -> torch.Tensor:
        """``cos(h_i, c_k)`` between features and the prototypes, in [-1, 1]."""
        return F.normalize(features, dim=1) @ F.normalize(self.prototypes, dim=1).T

    @override
    def forward(self, image: torch.Tensor, embed: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The cosine logits of ``image``; with ``embed``, also its L2-normalized projection.

        Training calls the module itself (not its parts) so that FSDP2 gathers the prototypes and the
        projection head, which the root unit holds, before they are used.
        """
        features = self.features(image)
        logits = self.cosine_logits(features)
        if not embed:
            return logits
        return logits, F.normalize(self.projection(features), dim=1)

    @override
    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy``, shard with FSDP2 (backbone layers are units; see ``docs/fsdp2.md``)."""
        shard_under_model_parallel(self)

    def current_teacher_temperature(self) -> float:
        hp = self.task_settings
        return teacher_temperature(self.current_epoch, hp.teacher_temp_start, hp.teacher_temp, hp.teacher_warmup_epochs)

    def compute_losses(self, batch: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """All loss terms (and their weighted sum under ``"loss"``) and the view-major logits of a training batch."""
        hp = self.task_settings
        image, target, labelled = _training_batch(batch)
        logits, embedding = self(torch.cat([image[:, 0], image[:, 1]]), embed=True)
        labelled2, target2 = labelled.repeat(2), target.repeat(2)
        _check_labelled_rows(target[labelled], self.known_classes)
        zero = logits.sum() * 0.0
        terms: dict[str, torch.Tensor] = {
            "distill": self_distillation_loss(logits, logits, self.current_teacher_temperature(), hp.student_temp),
            "memax": mean_entropy_maximization(logits, hp.student_temp),
            "infonce": unsupervised_contrastive_loss(embedding, hp.infonce_temperature),
            "ce": F.cross_entropy(logits[labelled2] / hp.student_temp, target2[labelled2]) if labelled.any() else zero,
            "supcon": supervised_contrastive_loss(
                embedding[labelled2], target2[labelled2], hp.supcon_temperature, hp.supcon_temperature
            ),
        }
        terms.update(self.lego_gcd_terms(logits, labelled2))  # LegoGCD's LossTerm modules, unweighted
        weights = self.lego_gcd_weights()  # their weights: β and w_dkl
        unsupervised = terms["distill"] + hp.memax_weight * terms["memax"] + weights["dkl"] * terms["dkl"]
        supervised = terms["ce"] + terms["supcon"]
        terms["loss"] = (
            (1 - hp.sup_weight) * (unsupervised + terms["infonce"])
            + hp.sup_weight * supervised
            + weights["ler"] * terms["ler"]
        )
        return terms, logits

    @override
    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        terms, logits = self.compute_losses(batch)
        self.update_logit_prior(logits)
        for name, value in terms.items():
            self.log(f"gcd/train_{name}", value.detach(), prog_bar=name == "loss")
        self.log("gcd/teacher_temp", self.current_teacher_temperature())
        return {"loss": terms["loss"], "logits": logits.detach()}

    def _collect(self, batch: Any, stage: str) -> None:
        image, truth, index = _evaluation_batch(batch)
        if image.dim() == 5:  # evaluation on the first view when the loader gives two
            image = image[:, 0]
        predictions = self(image).argmax(dim=1)
        rows = self.evaluation_rows[stage]
        if index is None:  # positions unique over the batches and ranks, so that no row is dropped as a duplicate
            world_size, rank = getattr(attached_trainer(self), "world_size", 1), self.global_rank
            index = (rows.num_rows + torch.arange(len(truth), device=truth.device)) * world_size + rank
        rows.update(*torch.stack([index, predictions, truth]))  # one dtype for the three, as they are gathered

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._collect(batch, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._collect(batch, "test")

    def _score(self, stage: str) -> None:
        rows = self.evaluation_rows[stage]
        if not rows.index:  # no batch on this process: it still takes part in the gather
            rows.add_nothing(self.device)
        _, predictions, truth = rows.compute()
        rows.reset()
        if not len(truth) or self.trainer.sanity_checking:
            return
        prefix = "gcd/" if stage == "val" else "gcd/test_"
        for version, score in (("", gcd_accuracy), ("v1_", gcd_accuracy_v1), ("v2b_", gcd_accuracy_balanced)):
            for group, value in score(predictions, truth, self.known_classes).items():
                # every rank scores the same gathered predictions; sync_dist only averages equal values
                self.log(f"{prefix}{version}{group}", value, prog_bar=not version and stage == "val", sync_dist=True)

    @override
    def on_validation_epoch_end(self) -> None:
        self._score("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._score("test")

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.task_settings
        optimizer = build_optimizer(
            self.parameters(), "sgd", hp.lr, hp.weight_decay, momentum=hp.momentum, nesterov=False
        )
        total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = WarmupSchedule("cosine", total_steps=total_steps, steps_per_epoch=total_steps, min_lr_ratio=1e-3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
