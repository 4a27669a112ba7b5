"""The training loop of supervised local learning, as a LightningModule mixin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from typing_extensions import override

from lightning_regs.functional._checks import check_choice, check_number
from lightning_regs.local_learning.builder import HeadName, LocalLearningSpec, Preset, warn_end_to_end
from lightning_regs.local_learning.heads import TaskLoss

# The parts of the mixin, one module each: the step, the schedulers (their names stay importable from here).
from lightning_regs.local_learning.local_step import LocalTrainingStep
from lightning_regs.local_learning.man import MomentumAuxiliaryHead
from lightning_regs.local_learning.sample_shape import training_input_shape
from lightning_regs.local_learning.scheduler_stepping import _MONITORED_KEY as _MONITORED_KEY
from lightning_regs.local_learning.scheduler_stepping import _PENDING_KEY as _PENDING_KEY
from lightning_regs.local_learning.scheduler_stepping import _PLATEAU_KEYS as _PLATEAU_KEYS
from lightning_regs.local_learning.scheduler_stepping import LocalSchedulerStepping
from lightning_regs.local_learning.scheduler_stepping import _keeping_plateau_keys as _keeping_plateau_keys
from lightning_regs.local_learning.scheduler_stepping import _split_plateau_keys as _split_plateau_keys
from lightning_regs.local_learning.splits import module_ranges
from lightning_regs.trusted_loading import TrustedCheckpointLoading

__all__ = ["LocalLearningMixin"]

# Checkpoint entry with the input shape the auxiliary heads were sized for (when it came from the data).
_INPUT_SHAPE_KEY = "local_learning_input_shape"


class LocalLearningMixin(TrustedCheckpointLoading, LocalTrainingStep, LocalSchedulerStepping, pl.LightningModule):
    """Train a layered network as K gradient-isolated modules, each by its own auxiliary loss.

    Per training batch, for each of the first ``K - 1`` modules in turn: forward, local loss through its
    auxiliary head, :meth:`manual_backward` at once (its graph is freed here, which is the whole memory
    saving), then detach the output before the next module. The last module trains through the real
    classifier head. One optimizer step covers backbone and heads. Under DDP the first ``K - 1`` backwards
    run inside the strategy's ``block_backward_sync()`` and the last outside, so gradients are all-reduced
    once per step (use ``DDPStrategy(find_unused_parameters=True)``). Under FSDP2
    (``ModelParallelStrategy``, see :mod:`lightning_regs.tasks.sharding`) each sharded unit reduce-scatters its
    gradients at the end of the one backward it takes part in; gradient clipping works on the sharded
    gradients (the norm is the norm of the whole gradient).

    LR schedulers are configured in ``configure_optimizers`` exactly as for automatic optimization and are
    stepped through :meth:`lr_scheduler_step`: ``interval="step"`` ones after every ``frequency``-th optimizer
    step (counted by ``global_step`` over the run; Lightning counts the batch index within the epoch),
    ``interval="epoch"`` ones after every ``frequency``-th full epoch (before that epoch's validation), and
    ``ReduceLROnPlateau`` with the value of its ``monitor`` (e.g. ``"val/loss"``) from
    ``trainer.callback_metrics``, after the validation that follows its step or epoch. A host that overrides
    ``setup`` (where heads without an ``input_shape`` are built from the data), ``on_train_batch_start``,
    ``on_train_epoch_end``, ``on_save_checkpoint`` or ``on_load_checkpoint`` must call ``super()``.

    The host calls :meth:`configure_local_learning` in its ``__init__`` and :meth:`local_training_step` in
    ``training_step``. Auxiliary heads live in ``self.aux_heads`` (an :class:`~torch.nn.ModuleDict` keyed
    ``"0" .. "K-2"``), so :meth:`export_state_dict` can drop them; validation, test and predict should use
    the backbone only.

    Example::

        >>> import torch
        >>> from lightning_regs.models import MLP
        >>> from lightning_regs.local_learning.heads import DGLHead
        >>> class Task(LocalLearningMixin):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = MLP(in_features=4, num_classes=2, width=8, depth=3)
        ...         self.configure_local_learning(self.net.layers, self.net.head, (0,), [DGLHead((8,), 2)])
        >>> sorted(Task().export_state_dict())[:2]
        ['net.head.bias', 'net.head.weight']
    """

    def setup_local_learning(
        self,
        backbone: nn.Module,
        num_classes: int | None = None,
        *,
        K: int | None = None,
        split: str | Sequence[int | str] = "auto",
        head: HeadName = "dgl",
        man: bool = False,
        d: int = 2,
        pyramid_coeff: float = 0.5,
        input_shape: Sequence[int] | None = None,
        lambdas: Sequence[float] | None = None,
        task_loss: TaskLoss = "cross_entropy",
        head_norm: bool = True,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        preset: Preset = "library",
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        man_momentum: float = 0.995,
    ) -> None:
        r"""Set up local learning on ``backbone`` in one call (in ``__init__``, after registering the backbone).

        ``backbone`` is the module the host registered and calls in ``forward``: a layered model, or any model
        :func:`lightning_regs.models.layered` understands (``nn.Sequential``, torchvision ResNet/VGG/ConvNeXt/ViT,
        a ``torch.compile``\ d one); local learning runs its layers eagerly through a layered view that shares its
        parameters, so the state dict keeps the backbone's own keys. The choices are checked here; the heads are
        built here when ``input_shape`` is given, else at ``setup`` from one sample of the training data (and the
        shape is saved in the checkpoint, so ``load_from_checkpoint`` rebuilds them).

        Args:
            backbone: the network to train module by module.
            num_classes: classes of the auxiliary heads; by default the backbone's ``num_classes``.
            K: number of modules; inferred from explicit ``split`` points, from ``d`` for AugLocal, else 4.
            split: ``"auto"``, ``"paper"``, ``"infopro_star"`` or the layer names/indices after which a module ends.
            head: ``"dgl"``, ``"infopro"`` or ``"auglocal"``; man: a momentum auxiliary network in front of each head,
                its EMA moved once per optimizer step by :meth:`local_training_step`; man_momentum: that EMA's
                momentum (the paper's 0.995).
            d, pyramid_coeff: AugLocal's depth and decay; lambdas, task_loss: InfoPro's weights and task term;
                head_norm: batch normalization in the heads (see ``LocalLearningClassifier``).
            input_shape: one sample's shape; ``None`` takes it from the training data.
            gradient_clip_val, gradient_clip_algorithm: clipping (the Trainer's needs automatic optimization).
            preset: ``"library"`` or ``"official"`` (InfoPro's un-normalized reconstruction target and SupCon mean
                over all anchors, MAN's randomly initialized copies and EMA update before the optimizer step; see
                ``LocalLearningClassifier``);
                image_mean, image_std: the inputs' ``Normalize``, which ``preset="official"`` needs for InfoPro.

        Example::

            >>> import torch
            >>> from torch import nn
            >>> class Mine(LocalLearningMixin):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32),
            ...                                  nn.ReLU(), nn.Linear(32, 3))
            ...         self.setup_local_learning(self.net, K=2, input_shape=(16,))
            ...     def training_step(self, batch, batch_idx):
            ...         x, y = batch
            ...         loss, logits, _ = self.local_training_step(x, y)
            ...         return loss
            >>> Mine().num_local_modules
            2
        """
        from lightning_regs.models.adapters import layered  # models import local_learning's splits

        view = layered(backbone)
        classes = num_classes if num_classes is not None else getattr(view, "num_classes", None)
        if not isinstance(classes, int):
            raise ValueError(
                f"setup_local_learning needs the number of classes: {type(backbone).__name__} has no int "
                "`num_classes`; pass num_classes=C."
            )
        owner = type(self).__name__
        if gradient_clip_val is not None:
            check_number(owner, "gradient_clip_val (or None: no clipping)", gradient_clip_val, low=0, low_open=True)
        check_choice(owner, "gradient_clip_algorithm", gradient_clip_algorithm, ("norm", "value"))
        spec = LocalLearningSpec.check(
            view, K, split, head, man, d, pyramid_coeff, lambdas, task_loss, head_norm,
            preset=preset, image_mean=image_mean, image_std=image_std, man_momentum=man_momentum,
        )  # fmt: skip
        self.automatic_optimization = False
        self._local_pending = (view, spec, classes, gradient_clip_val, gradient_clip_algorithm)
        self.local_spec = spec
        if input_shape is not None:
            self._build_local_learning(tuple(int(s) for s in input_shape))

    def _build_local_learning(self, input_shape: tuple[int, ...]) -> None:
        view, spec, classes, clip_val, clip_algorithm = self._local_pending
        points, aux_heads = spec.build(view, classes, input_shape)
        self.configure_local_learning(view.layers, view.head, points, aux_heads, clip_val, clip_algorithm)
        self.split_points = points
        self.local_input_shape = input_shape
        self._local_pending = None

    def _build_pending_from_data(self) -> None:
        if getattr(self, "_local_pending", None) is None:
            return
        shape = training_input_shape(self.trainer)
        if shape is None:
            raise ValueError(
                f"{type(self).__name__} sizes its auxiliary heads from one training sample, and none could be read "
                "(no DataModule with a training set, no train_dataloaders given to fit, or samples that are not "
                "(image, target) pairs or dicts with 'image'). Pass input_shape=(C, H, W), the shape of one sample."
            )
        self._build_local_learning(shape)
        if hasattr(self, "_hparams") and "input_shape" in self.hparams and self.hparams.input_shape is None:
            self.hparams.input_shape = list(shape)  # load_from_checkpoint then builds the heads at once

    def configure_local_learning(
        self,
        layers: nn.Sequential,
        head: nn.Module,
        points: Sequence[int],
        aux_heads: Sequence[nn.Module],
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
    ) -> None:
        """Register the split: ``layers`` cut after ``points``, one auxiliary head per module but the last.

        ``layers`` and ``head`` must already be registered on the module (e.g. as parts of its backbone).
        Gradient clipping is set here: Lightning's Trainer clipping is not available with manual optimization.
        No ``points`` (one module) is plain end-to-end training and warns (:class:`~.builder.EndToEndWarning`).
        """
        if len(aux_heads) != len(points):
            raise ValueError(f"{len(points) + 1} modules need {len(points)} auxiliary heads; got {len(aux_heads)}.")
        if not points and getattr(self, "local_spec", None) is None:  # setup_local_learning warned already
            warn_end_to_end("configure_local_learning with no split points")
        self.automatic_optimization = False
        self.aux_heads = nn.ModuleDict({str(j): aux for j, aux in enumerate(aux_heads)})
        # Tuples: views on layers registered elsewhere, not new submodules.
        self._local_modules = tuple(layers[a:b] for a, b in module_ranges(points, len(layers)))
        self._local_head = (head,)
        self._local_momentum_heads = tuple(m for m in self.aux_heads.modules() if isinstance(m, MomentumAuxiliaryHead))
        self._local_step_dropped = False
        self._local_clip = (gradient_clip_val, gradient_clip_algorithm)
        self._local_stepped = False
        self._local_epoch_finished = False
        self._local_batch_idx = 0
        self._local_monitored: dict[str, float] = {}

    @property
    def num_local_modules(self) -> int:
        """K, the number of gradient-isolated modules."""
        if getattr(self, "_local_modules", None) is None:
            spec = getattr(self, "local_spec", None)
            if spec is None:
                raise RuntimeError(f"{type(self).__name__} has not set up local learning: call setup_local_learning.")
            return spec.K
        return len(self._local_modules)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        self._save_scheduler_state(checkpoint)
        if getattr(self, "local_input_shape", None) is not None:
            checkpoint[_INPUT_SHAPE_KEY] = list(self.local_input_shape)

    @override
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            self._build_pending_from_data()

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if getattr(self, "_local_pending", None) is not None and _INPUT_SHAPE_KEY in checkpoint:
            self._build_local_learning(tuple(checkpoint[_INPUT_SHAPE_KEY]))  # before the weights are loaded
        self._load_scheduler_state(checkpoint)  # after the build, which resets it

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict without the auxiliary heads: what inference needs."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("aux_heads.")}
