"""From a model and a few choices to split points and auxiliary heads: what one local-learning setup builds."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lightning_regs.functional.classification import classification_loss
from lightning_regs.local_learning.auglocal import AugLocalHead, auglocal_depths
from lightning_regs.local_learning.heads import INFOPRO_LAMBDAS, DGLHead, InfoProHead, TaskLoss, infopro_lambdas
from lightning_regs.local_learning.man import MomentumAuxiliaryHead, check_momentum
from lightning_regs.local_learning.splits import every_layer_split, resolve_split
from lightning_regs.models.layered import layer_sequence
from lightning_regs.modes import eval_mode

__all__ = ["EndToEndWarning", "HeadName", "LocalLearningSpec", "Preset", "warn_end_to_end"]

HeadName = Literal["dgl", "infopro", "auglocal"]
_HEADS = ("dgl", "infopro", "auglocal")
Preset = Literal["library", "official"]


class EndToEndWarning(UserWarning):
    """A local-learning set-up with a single module (K = 1): plain end-to-end training."""


def warn_end_to_end(detail: str) -> None:
    """Warn that a set-up with one module (K = 1) is plain end-to-end training, and how to get local learning.

    A warning, not an error: K = 1 is the end-to-end baseline that runs over K compare against (the method
    card's tables have a K=1 row), trained by the same loop, so it stays possible, but never silently.

    Example::

        >>> import pytest
        >>> with pytest.warns(EndToEndWarning, match="plain end-to-end training"):
        ...     warn_end_to_end("K=1")
    """
    warnings.warn(
        f"{detail}: one module, so local learning is plain end-to-end training (the classifier's loss trains every "
        "layer, no auxiliary head). Set K >= 2 (or at least one split point) for gradient-isolated modules; "
        "keep K=1 only as the end-to-end baseline.",
        EndToEndWarning,
        stacklevel=3,
    )


@dataclass(frozen=True)
class LocalLearningSpec:
    """The choices of a local-learning setup, checked when made; :meth:`build` makes the heads for an input shape.

    ``K`` is inferred: from explicit split points (``len(split) + 1``), from ``d`` for AugLocal
    (``L - d``), else 4. See :meth:`LocalLearningMixin.setup_local_learning` for the arguments. A set-up with
    ``K = 1`` (``K=1``, ``split=[]``, AugLocal's ``d = L - 1``) warns (:class:`EndToEndWarning`): it is plain
    end-to-end training.

    Example::

        >>> from lightning_regs.models import MLP
        >>> model = MLP(in_features=4, num_classes=3, width=8, depth=4)
        >>> spec = LocalLearningSpec.check(model, split=[0, 1])
        >>> spec.K
        3
        >>> points, heads = spec.build(model, 3, (4,))
        >>> points, len(heads)
        ((0, 1), 2)
    """

    K: int
    split: str | tuple[int | str, ...]
    head: HeadName
    man: bool
    d: int
    pyramid_coeff: float
    lambdas: tuple[float, ...] | None
    task_loss: TaskLoss
    head_norm: bool
    preset: Preset = "library"
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None
    man_momentum: float = 0.995

    @classmethod
    def check(
        cls,
        model: nn.Module,
        K: int | None = None,
        split: str | Sequence[int | str] = "auto",
        head: HeadName = "dgl",
        man: bool = False,
        d: int = 2,
        pyramid_coeff: float = 0.5,
        lambdas: Sequence[float] | None = None,
        task_loss: TaskLoss = "cross_entropy",
        head_norm: bool = True,
        *,
        preset: Preset = "library",
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        man_momentum: float = 0.995,
    ) -> LocalLearningSpec:
        """Validate the choices against ``model`` (a layered model) and infer ``K``."""
        if head not in _HEADS:
            raise ValueError(f"Unknown head {head!r}: use one of {_HEADS}.")
        check_momentum("LocalLearningSpec (man_momentum)", man_momentum)
        if not man and man_momentum != 0.995:
            raise ValueError(
                f"man_momentum={man_momentum} sets the momentum auxiliary networks' EMA, and man=False builds none: "
                "set man=True, or leave man_momentum at its default."
            )
        if preset not in ("library", "official"):
            raise ValueError(f"preset must be 'library' or 'official'; got {preset!r}.")
        if (image_mean is None) != (image_std is None):
            raise ValueError("Pass both image_mean and image_std (the input's Normalize), or neither.")
        if image_mean is not None and not (head == "infopro" and preset == "official"):
            raise ValueError(
                "image_mean/image_std set InfoPro's official reconstruction target: they apply with head='infopro' "
                f"and preset='official' only (got head={head!r}, preset={preset!r})."
            )
        if preset == "official" and head == "infopro" and image_mean is None:
            raise ValueError(
                "preset='official' reconstructs the un-normalized image, as the official InfoPro code does: pass "
                "image_mean and image_std, the per-channel Normalize of your inputs (e.g. "
                "image_mean=CIFAR10DataModule.mean, image_std=CIFAR10DataModule.std)."
            )
        if task_loss != "cross_entropy" and head != "infopro":
            raise ValueError(
                f"task_loss={task_loss!r} applies to InfoPro heads; head={head!r} trains with cross-entropy."
            )
        num_layers = len(layer_sequence(model))
        if head == "auglocal":
            K = _check_auglocal(num_layers, K, split, man, d)
        elif not isinstance(split, str):
            split = tuple(split)
            if K is None:
                K = len(split) + 1
        elif K is None:
            K = 4
        if K == 1 and head == "auglocal":
            fix = f"d <= {num_layers - 2} gives K >= 2" if num_layers >= 3 else "AugLocal needs 3 layers for K >= 2"
            warn_end_to_end(f"head='auglocal' with d={d} on a model of {num_layers} layers gives K = L - d = 1 ({fix})")
        elif K == 1 and (isinstance(split, str) or not split):  # else K disagrees with the points: an error at build
            warn_end_to_end("K=1" if isinstance(split, str) else "split=[] gives K=1")
        if head == "infopro":
            weights = infopro_lambdas(K, _lambdas_for(model, K, lambdas))
            if any(recon == 0 and task == 0 for recon, task in weights):
                raise ValueError(
                    f"InfoPro lambdas {tuple(lambdas or ())} give some of the K={K} modules zero weight on both terms, "
                    "so they would never be trained; choose endpoints that keep one term positive at every module."
                )
        lambdas = tuple(float(x) for x in lambdas) if lambdas is not None else None
        mean = tuple(float(x) for x in image_mean) if image_mean is not None else None
        std = tuple(float(x) for x in image_std) if image_std is not None else None
        return cls(
            K, split, head, bool(man), d, float(pyramid_coeff), lambdas, task_loss, bool(head_norm), preset, mean, std,
            float(man_momentum),
        )  # fmt: skip

    def build(
        self, model: nn.Module, num_classes: int, input_shape: Sequence[int]
    ) -> tuple[tuple[int, ...], list[nn.Module]]:
        """The split points and one auxiliary head per module but the last, sized for ``input_shape`` samples."""
        layers = layer_sequence(model)
        input_shape = tuple(int(s) for s in input_shape)
        shapes = layer_output_shapes(layers, input_shape)
        weights = infopro_lambdas(self.K, _lambdas_for(model, self.K, self.lambdas))
        if self.head == "auglocal":
            points = every_layer_split(len(layers), self.d)
            depths = auglocal_depths(len(layers), self.d, self.pyramid_coeff)
            heads = [AugLocalHead(layers, shapes, end, depths[end], num_classes, norm=self.head_norm) for end in points]
            return points, heads
        # The auto split's probe batch comes from a private generator, and the throwaway heads it builds to measure
        # memory draw inside a forked RNG: the global stream, hence the real heads' initialization below, is the
        # same whichever split mode found the points.
        probe = torch.randn(8, *input_shape, generator=torch.Generator().manual_seed(0))
        with torch.random.fork_rng(devices=[]):
            cost_probe = _CostProbe(self, model, layers, shapes, input_shape, probe, num_classes)
            points = resolve_split(model, self.split, K=self.K, sample=probe, head_for=cost_probe)
        heads = [
            self.aux_head(layers, shapes, end, num_classes, input_shape, weights[j]) for j, end in enumerate(points)
        ]
        return points, heads

    def aux_head(
        self,
        layers: nn.Sequential,
        shapes: list[tuple[int, ...]],
        end: int,
        num_classes: int,
        input_shape: tuple[int, ...],
        weights: tuple[float, float],
    ) -> nn.Module:
        """The DGL or InfoPro head after layer ``end`` (behind a MAN with ``man=True``)."""
        # With MAN the head reads the next block's output, so it is sized for that shape.
        feature_shape = shapes[end + 1] if self.man else shapes[end]
        official = self.preset == "official"
        if self.head == "dgl":
            aux: nn.Module = DGLHead(feature_shape, num_classes, norm=self.head_norm)
        else:
            aux = InfoProHead(
                feature_shape, num_classes, input_shape, *weights, norm=self.head_norm, task_loss=self.task_loss,
                image_mean=self.image_mean, image_std=self.image_std,
                supcon_anchors="all" if official else "with_positives",
            )  # fmt: skip
        if not self.man:
            return aux
        return MomentumAuxiliaryHead(
            aux,
            layers[end + 1],
            init="random" if official else "copy",
            momentum=self.man_momentum,
            update="before_step" if official else "after_step",
        )


def layer_output_shapes(layers: nn.Sequential, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The per-sample output shape of every layer for inputs of ``input_shape`` (a named error if they do not fit).

    Example::

        >>> layer_output_shapes(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), (4,))
        [(8,), (8,)]
    """
    shapes = []
    with eval_mode(layers), torch.no_grad():
        h = torch.zeros(2, *input_shape)
        for name, layer in layers.named_children():
            try:
                h = layer(h)
            except RuntimeError as error:
                raise ValueError(
                    f"Local learning sizes its auxiliary heads by running a (2, {', '.join(map(str, input_shape))}) "
                    f"batch through the layers, and layer {name!r} rejected it: {error}. Set input_shape to the shape "
                    "of one input sample (e.g. (1, 8, 8) for digits, (3, 32, 32) for CIFAR), or leave it None to take "
                    "it from the training data."
                ) from error
            shapes.append(tuple(h.shape[1:]))
    return shapes


def _lambdas_for(model: nn.Module, K: int, lambdas: Sequence[float] | None) -> Sequence[float]:
    if lambdas is not None:
        return lambdas
    return INFOPRO_LAMBDAS.get((getattr(model, "depth", None), K), (5.0, 1.0, 0.0, 1.0))


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


class _CostProbe:
    """``head_for`` of the auto split: the loss of the head that would follow layer ``i`` (both terms on)."""

    def __init__(
        self,
        spec: LocalLearningSpec,
        model: nn.Module,
        layers: nn.Sequential,
        shapes: list[tuple[int, ...]],
        input_shape: tuple[int, ...],
        probe: torch.Tensor,
        num_classes: int,
    ) -> None:
        self.spec, self.head, self.layers, self.shapes = spec, model.head, layers, shapes
        self.input_shape, self.num_classes, self.image = input_shape, num_classes, probe
        self.target = torch.arange(probe.shape[0]) % num_classes

    def __call__(self, index: int, output: torch.Tensor):
        if index == len(self.layers) - 1:
            return lambda h: classification_loss(self.head(h), self.target)
        aux = self.spec.aux_head(self.layers, self.shapes, index, self.num_classes, self.input_shape, (1.0, 1.0))
        return lambda h: aux(h, self.target, self.image)
