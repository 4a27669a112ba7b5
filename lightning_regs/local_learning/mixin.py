"""The training loop of supervised local learning, as a LightningModule mixin."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.types import LRSchedulerConfig
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from typing_extensions import override

from lightning_regs.functional._checks import check_choice, check_number
from lightning_regs.functional.classification import classification_loss
from lightning_regs.local_learning.builder import HeadName, LocalLearningSpec, Preset, warn_end_to_end
from lightning_regs.local_learning.heads import TaskLoss
from lightning_regs.local_learning.man import ManUpdate, MomentumAuxiliaryHead
from lightning_regs.local_learning.sample_shape import training_input_shape
from lightning_regs.local_learning.splits import module_ranges
from lightning_regs.trusted_loading import TrustedCheckpointLoading

__all__ = ["LocalLearningMixin"]

# Scheduler-dict keys that Lightning parses for automatic optimization only (it drops them, with a warning, under
# manual optimization); the mixin keeps them and steps ReduceLROnPlateau as automatic optimization would.
_PLATEAU_KEYS = ("reduce_on_plateau", "monitor", "strict")
# Checkpoint entry with the last values of the metrics ReduceLROnPlateau monitors (Lightning does not save logged
# metrics, and a checkpoint written at validation end resumes with that epoch's scheduler update still to do).
_MONITORED_KEY = "local_learning_monitored_metrics"
# Checkpoint entry with the scheduler updates still due when it was written (a plateau update after the step).
_PENDING_KEY = "local_learning_pending_updates"
# Checkpoint entry with the input shape the auxiliary heads were sized for (when it came from the data).
_INPUT_SHAPE_KEY = "local_learning_input_shape"


def _split_plateau_keys(conf: Any) -> tuple[Any, dict[int, dict[str, Any]]]:
    """``configure_optimizers``' output without :data:`_PLATEAU_KEYS`, and those keys per scheduler (by ``id``)."""
    found: dict[int, dict[str, Any]] = {}

    def scheduler_entry(entry: Any, monitor: Any) -> Any:
        if isinstance(entry, Mapping) and "scheduler" in entry:
            found[id(entry["scheduler"])] = {key: entry[key] for key in _PLATEAU_KEYS if key in entry}
            return {key: value for key, value in entry.items() if key not in _PLATEAU_KEYS}
        if monitor is not None:  # a bare scheduler beside a top-level "monitor"
            found[id(entry)] = {"monitor": monitor}
        return entry

    def walk(node: Any) -> Any:
        if isinstance(node, Mapping):
            if "scheduler" in node:
                return scheduler_entry(node, None)
            if "lr_scheduler" in node:
                return {**node, "lr_scheduler": scheduler_entry(node["lr_scheduler"], node.get("monitor"))}
            return node
        if isinstance(node, (list, tuple)):
            return type(node)(walk(item) for item in node)
        return node

    return walk(conf), found


def _keeping_plateau_keys(configure: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(configure)
    def configure_optimizers(self: LocalLearningMixin, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_local_configuring", False):  # a super() call from an overriding configure_optimizers
            return configure(self, *args, **kwargs)
        self._local_configuring = True
        try:
            conf = configure(self, *args, **kwargs)
        finally:
            self._local_configuring = False
        conf, self._local_plateau_keys = _split_plateau_keys(conf)
        return conf

    configure_optimizers._keeps_plateau_keys = True  # type: ignore[attr-defined]
    return configure_optimizers


class LocalLearningMixin(TrustedCheckpointLoading, pl.LightningModule):
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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Lightning drops a scheduler dict's "monitor"/"strict"/"reduce_on_plateau" under manual optimization;
        # wrapping the host's configure_optimizers keeps them (and spares the user Lightning's warning).
        configure = cls.configure_optimizers
        if configure is not pl.LightningModule.configure_optimizers and not hasattr(configure, "_keeps_plateau_keys"):
            cls.configure_optimizers = _keeping_plateau_keys(configure)  # type: ignore[method-assign]

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

    def _check_can_train_locally(self) -> None:
        if getattr(self, "_local_modules", None) is None:
            raise RuntimeError(
                f"{type(self).__name__} has no local-learning split yet: call setup_local_learning(...) in __init__ "
                "(its heads are built at setup when input_shape is not given), or configure_local_learning(...)."
            )
        if self.automatic_optimization:
            raise RuntimeError(
                f"{type(self).__name__} trains with manual optimization (one backward per module); "
                "automatic_optimization was turned back on. Leave it False."
            )
        strategy = self.trainer.strategy
        is_deepspeed = "deepspeed" in type(strategy).__name__.lower()
        if is_deepspeed or not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy, ModelParallelStrategy)):
            raise RuntimeError(
                f"Local learning runs several backwards per step, which only the single-device and DDP strategies "
                f"and FSDP2 (ModelParallelStrategy) support; got {type(strategy).__name__}. Use strategy='auto' on "
                "one device, DDPStrategy(find_unused_parameters=True) (or 'ddp_find_unused_parameters_true'), or "
                "ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1)."
            )

    def local_backward(
        self,
        image: torch.Tensor,
        target: torch.Tensor,
        label_smoothing: float = 0.0,
        backward: Callable[[torch.Tensor], None] | None = None,
        final_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Forward and backward module by module; returns the detached final loss, logits and local losses.

        ``backward`` defaults to :meth:`manual_backward` (inside ``block_backward_sync()`` for all but the last
        module); pass ``torch.Tensor.backward`` to run the loop without a Trainer (e.g. to measure memory).
        ``final_loss(logits)`` is the last module's loss (a task's ``compute_loss``); by default cross-entropy
        on ``target`` with ``label_smoothing``.
        """
        block_sync = getattr(self.trainer.strategy, "block_backward_sync", None) if backward is None else None
        run_backward = self.manual_backward if backward is None else backward
        local_losses = []
        h = image
        for j, module in enumerate(self._local_modules[:-1]):
            h = module(h)
            loss_j = self.aux_heads[str(j)](h, target, image)
            with block_sync() if block_sync is not None else contextlib.nullcontext():
                run_backward(loss_j)
            local_losses.append(loss_j.detach())
            h = h.detach()
        logits = self._local_head[0](self._local_modules[-1](h))
        loss = final_loss(logits) if final_loss is not None else classification_loss(logits, target, label_smoothing)
        run_backward(loss)
        return loss.detach(), logits.detach(), local_losses

    def local_training_step(
        self,
        image: torch.Tensor,
        target: torch.Tensor,
        label_smoothing: float = 0.0,
        final_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """One optimizer step of local learning; returns the detached final loss, logits and local losses.

        The momentum auxiliary networks' EMAs (``man=True``) move here, once per step, at the point their
        ``update`` names (:meth:`update_momentum_heads`); a step whose gradients were dropped (a host's
        non-finite skip sets ``_local_step_dropped``) moves none of them.
        """
        self._check_can_train_locally()
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        self._local_step_dropped = False
        loss, logits, local_losses = self.local_backward(image, target, label_smoothing, final_loss=final_loss)
        clip_val, clip_algorithm = self._local_clip
        if clip_val is not None:
            self.clip_gradients(optimizer, gradient_clip_val=clip_val, gradient_clip_algorithm=clip_algorithm)
        self.update_momentum_heads("before_step")
        optimizer.step()
        self.update_momentum_heads("after_step")
        self._local_stepped = True
        self._step_lr_schedulers("step", plateau=False)
        self._local_epoch_finished = self._is_last_training_batch()
        if self._local_epoch_finished:
            # Before validation, as Lightning does: a checkpoint saved at validation end then holds this step.
            self._step_lr_schedulers("epoch", plateau=False)
        for j, loss_j in enumerate(local_losses):
            self.log(f"local/loss{j}", loss_j)
        return loss, logits, local_losses

    def update_momentum_heads(self, when: ManUpdate) -> None:
        """Move the EMA of every momentum auxiliary network whose ``update`` is ``when`` (``"before_step"``: after
        the backward, before ``optimizer.step()``; ``"after_step"``: after it); nothing on a dropped step.

        :meth:`local_training_step` calls it at both points; a host that writes its own optimizer step calls it
        the same way.
        """
        if self._local_step_dropped:
            return
        for head in self._local_momentum_heads:
            if head.update == when:
                head.update_ema()

    def _is_last_training_batch(self) -> bool:
        # The test of Lightning's own epoch-end scheduler update: the data ran out, or the epoch's batch limit
        # (limit_train_batches) is reached.
        trainer = self.trainer
        return bool(trainer.is_last_batch) or self._local_batch_idx + 1 >= trainer.num_training_batches

    def _lr_scheduler_configs(self) -> list[LRSchedulerConfig]:
        """Lightning's parsed scheduler configs, with the ReduceLROnPlateau settings automatic optimization has."""
        configs = self.trainer.lr_scheduler_configs
        if self.__dict__.get("_local_resolved_configs") is configs:  # resolved once per configure_optimizers
            return configs
        kept = getattr(self, "_local_plateau_keys", {})
        for config in configs:
            keys = kept.get(id(config.scheduler), {})
            config.reduce_on_plateau = keys.get("reduce_on_plateau", isinstance(config.scheduler, ReduceLROnPlateau))
            # Lightning's CLI ReduceLROnPlateau carries its monitor as an attribute.
            config.monitor = keys.get("monitor", getattr(config.scheduler, "monitor", None))
            config.strict = keys.get("strict", True)
            if config.reduce_on_plateau and config.monitor is None:
                raise MisconfigurationException(
                    f"{type(config.scheduler).__name__} needs a metric to monitor: return "
                    '{"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}} '
                    "from configure_optimizers."
                )
        self.__dict__["_local_resolved_configs"] = configs
        return configs

    def _step_lr_schedulers(self, interval: str, plateau: bool) -> None:
        """Step the configured schedulers of this ``interval`` and kind through :meth:`lr_scheduler_step`.

        ``interval="step"`` ones advance after every ``frequency``-th optimizer step (counted by
        ``global_step``), ``interval="epoch"`` ones after every ``frequency``-th epoch; ``ReduceLROnPlateau``
        gets the value of its ``monitor`` from ``trainer.callback_metrics``.
        """
        trainer = self.trainer
        for config in self._lr_scheduler_configs():
            if config.interval != interval or config.reduce_on_plateau != plateau:
                continue
            count = trainer.global_step if interval == "step" else trainer.current_epoch + 1
            if count % config.frequency != 0:
                continue
            metric = None
            if config.reduce_on_plateau:
                # After a resume, the values saved with the checkpoint stand in for the logged ones until logged anew.
                metric = trainer.callback_metrics.get(config.monitor, self._local_monitored.get(config.monitor))
                if metric is None:
                    message = (
                        f"{type(config.scheduler).__name__} monitors {config.monitor!r}, which has not been logged "
                        f"before its {interval}-end update (logged metrics: {sorted(trainer.callback_metrics)}). "
                        f"Log {config.monitor!r} (for a validation metric, keep validation running before every "
                        "scheduler update), or set 'monitor' in configure_optimizers to one of the logged metrics."
                    )
                    if config.strict:
                        raise MisconfigurationException(message)
                    rank_zero_warn(f"{message} Skipping this update (strict=False).", category=RuntimeWarning)
                    continue
            self.lr_scheduler_step(config.scheduler, metric)

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self._local_batch_idx = batch_idx
        self._flush_step_plateau()

    def _flush_step_plateau(self) -> None:
        # Step-interval ReduceLROnPlateau updates once the step's metrics are logged and any validation that
        # followed the step has run (Lightning updates after its in-epoch validation too): at the next batch's
        # start, or at the epoch's end.
        if self._local_stepped:
            self._local_stepped = False
            self._step_lr_schedulers("step", plateau=True)

    @override
    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self._flush_step_plateau()
        if self._local_epoch_finished:  # not when max_steps cut the epoch short, as Lightning
            # After validation, whose metrics ReduceLROnPlateau usually monitors.
            self._step_lr_schedulers("epoch", plateau=True)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        metrics = self.trainer.callback_metrics
        monitored = {config.monitor for config in self._lr_scheduler_configs() if config.reduce_on_plateau}
        values = {**self._local_monitored, **{key: float(metrics[key]) for key in monitored if key in metrics}}
        checkpoint[_MONITORED_KEY] = values
        checkpoint[_PENDING_KEY] = {"step_plateau": self._local_stepped, "epoch_finished": self._local_epoch_finished}
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
        self._local_monitored = dict(checkpoint.get(_MONITORED_KEY, {}))
        pending = checkpoint.get(_PENDING_KEY, {})
        self._local_stepped = bool(pending.get("step_plateau", False))
        self._local_epoch_finished = bool(pending.get("epoch_finished", False))

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict without the auxiliary heads: what inference needs."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("aux_heads.")}
