"""An image classifier trained by supervised local learning (DGL / InfoPro / AugLocal heads, optional MAN)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from lightning_regs.datamodules.batch import unpack_batch
from lightning_regs.functional.classification import classification_loss
from lightning_regs.functional.modes import eval_mode
from lightning_regs.local_learning.auglocal import AugLocalHead, auglocal_depths
from lightning_regs.local_learning.heads import INFOPRO_LAMBDAS, DGLHead, InfoProHead, TaskLoss, infopro_lambdas
from lightning_regs.local_learning.man import MomentumAuxiliaryHead
from lightning_regs.local_learning.mixin import LocalLearningMixin
from lightning_regs.local_learning.splits import every_layer_split, resolve_split
from lightning_regs.models.layered import layer_sequence
from lightning_regs.tasks.image_classifier import ImageClassifier

__all__ = ["LocalLearningClassifier"]

HeadName = Literal["dgl", "infopro", "auglocal"]


class LocalLearningClassifier(LocalLearningMixin, ImageClassifier):
    """:class:`~lightning_regs.tasks.ImageClassifier` trained as K gradient-isolated modules.

    The backbone (any model with a layer sequence) is cut into ``K`` modules by ``split``; each module but
    the last gets a ``dgl`` or ``infopro`` auxiliary head (with ``man=True``, behind a momentum auxiliary
    network: add the :class:`~lightning_regs.callbacks.MomentumAuxiliaryNetworks` callback). With
    ``head="auglocal"`` every layer is its own module (AugLocal's split, ``K = L - d``) and each gets an
    :class:`~lightning_regs.local_learning.auglocal.AugLocalHead` of pyramidally decaying depth. Metrics,
    logging and optimizer/scheduler arguments are those of ``ImageClassifier``; each local loss is logged
    as ``local/loss{j}``. Evaluation and prediction use the backbone alone.

    Args:
        backbone: a model with ``layers`` and ``head`` (see :mod:`lightning_regs.models.layered`).
        num_classes: number of classes.
        K: number of gradient-isolated modules; default 4, and ``L - d`` (set by ``d``) for ``auglocal``.
        split: ``auto`` (smallest peak activation memory), ``paper``, ``infopro_star`` or a list of
            layer names/indices after which a module ends. ``auglocal`` always splits every layer
            (leave ``auto`` or write ``every_layer``).
        head: ``dgl``, ``infopro`` or ``auglocal``.
        man: put a momentum auxiliary network (MAN) in front of each auxiliary head (DGL/InfoPro only).
        d: AugLocal's aux depth: the first layer's aux net copies ``d`` later layers, and the last ``d``
            layers train with the classifier (paper: 2 for ResNet-32, 3 for ResNet-110).
        pyramid_coeff: AugLocal's linear depth decay ``tau`` (0.5 in the paper; 0 keeps depth ``d``).
        input_shape: shape of one input sample, used to size the heads and measure the auto split.
        lambdas: InfoPro's ``(recon_first, task_first, recon_last, task_last)``; default: the paper's
            preset for the CIFAR ResNet depth and K when there is one, else ``(5, 1, 0, 1)``.
        task_loss: InfoPro's task term, ``cross_entropy`` or ``contrast`` (supervised contrastive, the
            paper's best setting and the one its lambda presets were tuned for).
        head_norm: batch normalization in the auxiliary heads.
        gradient_clip_val: clip gradients to this norm/value (Trainer clipping is unavailable here).
        gradient_clip_algorithm: ``norm`` or ``value``.
        **kwargs: the :class:`~lightning_regs.tasks.ImageClassifier` arguments (optimizer, lr, momentum,
            nesterov, weight_decay, scheduler, warmup_epochs, milestones, gamma, min_lr_ratio,
            label_smoothing, ece_bins), with its defaults.

    Example::

        >>> from lightning_regs.models import resnet20
        >>> task = LocalLearningClassifier(resnet20(), 10, K=2, split=["s2b0"], head="infopro")
        >>> task.num_local_modules, sorted(task.aux_heads)
        (2, ['0'])
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        K: int | None = None,
        split: str | Sequence[int | str] = "auto",
        head: HeadName = "dgl",
        man: bool = False,
        d: int = 2,
        pyramid_coeff: float = 0.5,
        input_shape: Sequence[int] = (3, 32, 32),
        lambdas: Sequence[float] | None = None,
        task_loss: TaskLoss = "cross_entropy",
        head_norm: bool = True,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: Literal["norm", "value"] = "norm",
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, num_classes, **kwargs)
        if head not in ("dgl", "infopro", "auglocal"):
            raise ValueError(f"Unknown head {head!r}: use 'dgl', 'infopro' or 'auglocal'.")
        if task_loss != "cross_entropy" and head != "infopro":
            raise ValueError(
                f"task_loss={task_loss!r} applies to InfoPro heads; head={head!r} trains with cross-entropy."
            )
        layers = layer_sequence(backbone)
        if head == "auglocal":
            K = self._check_auglocal(len(layers), K, split, man, d)
        elif K is None:
            K = 4
        self._head_kind, self._man, self._head_norm, self._task_loss = head, man, head_norm, task_loss
        self._input_shape = tuple(int(s) for s in input_shape)
        shapes = self._layer_output_shapes(layers)
        if lambdas is None:
            lambdas = INFOPRO_LAMBDAS.get((getattr(backbone, "depth", None), K), (5.0, 1.0, 0.0, 1.0))
        weights = infopro_lambdas(K, lambdas)
        if head == "infopro" and any(recon == 0 and task == 0 for recon, task in weights):
            raise ValueError(
                f"InfoPro lambdas {tuple(lambdas)} give some of the K={K} modules zero weight on both terms, so they "
                "would never be trained; choose endpoints that keep one term positive at every module."
            )
        if head == "auglocal":
            points = every_layer_split(len(layers), d)
            self._auglocal_depths = auglocal_depths(len(layers), d, pyramid_coeff)
        else:
            # The auto split's probe batch comes from a private generator, and the throwaway heads it builds to
            # measure memory draw inside a forked RNG: the global stream, hence the real heads' initialization
            # below, is the same whichever split mode found the points.
            probe = torch.randn(8, *self._input_shape, generator=torch.Generator().manual_seed(0))
            with torch.random.fork_rng(devices=[]):
                points = resolve_split(
                    backbone, split, K=K, sample=probe, head_for=_CostProbe(self, layers, shapes, probe, num_classes)
                )
        aux_heads = [self._build_aux_head(layers, shapes, end, num_classes, weights[j]) for j, end in enumerate(points)]
        self.configure_local_learning(
            layers, backbone.head, points, aux_heads, gradient_clip_val, gradient_clip_algorithm
        )
        self.split_points = points

    @staticmethod
    def _check_auglocal(num_layers: int, K: int | None, split: Any, man: bool, d: int) -> int:
        if man:
            raise ValueError("MAN sits in front of a DGL or InfoPro head; use man=False with head='auglocal'.")
        if split not in ("auto", "every_layer"):
            raise ValueError(
                f"head='auglocal' splits every layer (K = L - d); got split={split!r}. Leave split='auto' or "
                "write split='every_layer', and set d."
            )
        every_layer_split(num_layers, d)  # validates d
        if K is not None and num_layers - d != K:
            raise ValueError(
                f"head='auglocal' splits every layer, so K = L - d = {num_layers} - {d} = {num_layers - d}; got "
                f"K={K}. Leave K unset and choose d (d = {num_layers - K} gives K={K})."
            )
        return num_layers - d

    def _layer_output_shapes(self, layers: nn.Sequential) -> list[tuple[int, ...]]:
        shapes = []
        with eval_mode(layers), torch.no_grad():
            h = torch.zeros(2, *self._input_shape)
            for layer in layers:
                h = layer(h)
                shapes.append(tuple(h.shape[1:]))
        return shapes

    def _build_aux_head(
        self,
        layers: nn.Sequential,
        shapes: list[tuple[int, ...]],
        end: int,
        num_classes: int,
        weights: tuple[float, float],
    ) -> nn.Module:
        # With MAN the head reads the next block's output, so it is sized for that shape.
        feature_shape = shapes[end + 1] if self._man else shapes[end]
        if self._head_kind == "auglocal":  # every-layer split: module `end` is layer `end`
            return AugLocalHead(layers, shapes, end, self._auglocal_depths[end], num_classes, norm=self._head_norm)
        if self._head_kind == "dgl":
            aux: nn.Module = DGLHead(feature_shape, num_classes, norm=self._head_norm)
        else:
            aux = InfoProHead(
                feature_shape, num_classes, self._input_shape, *weights, norm=self._head_norm, task_loss=self._task_loss
            )
        return MomentumAuxiliaryHead(aux, layers[end + 1]) if self._man else aux

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        image, target = unpack_batch(batch)
        if not self._targets_checked:
            self._check_target_range(target)
        loss, logits, _ = self.local_training_step(image, target, final_loss=lambda z: self.compute_loss(z, batch))
        return self.log_training(loss, logits, batch)


class _CostProbe:
    """``head_for`` of the auto split: the loss of the head that would follow layer ``i`` (both terms on)."""

    def __init__(
        self,
        task: LocalLearningClassifier,
        layers: nn.Sequential,
        shapes: list[tuple[int, ...]],
        probe: torch.Tensor,
        num_classes: int,
    ) -> None:
        self.task, self.layers, self.shapes, self.num_classes = task, layers, shapes, num_classes
        self.image = probe
        self.target = torch.arange(probe.shape[0]) % num_classes

    def __call__(self, index: int, output: torch.Tensor):
        if index == len(self.layers) - 1:
            head = self.task.backbone.head
            return lambda h: classification_loss(head(h), self.target)
        aux = self.task._build_aux_head(self.layers, self.shapes, index, self.num_classes, (1.0, 1.0))
        return lambda h: aux(h, self.target, self.image)
