"""One optimizer step of local learning: forward and backward module by module, clip, step, move the MAN EMAs
(:class:`LocalTrainingStep`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, SingleDeviceStrategy

from lightning_regs.functional.classification import classification_loss
from lightning_regs.local_learning.man import ManUpdate

__all__ = ["LocalTrainingStep"]


class LocalTrainingStep:
    """Mixin of :class:`~lightning_regs.local_learning.LocalLearningMixin` (before ``LightningModule`` in the
    bases): :meth:`local_training_step` and the loop it runs.

    The host's ``configure_local_learning`` sets the modules, heads and clipping this reads; the schedulers are
    stepped through :class:`~lightning_regs.local_learning.scheduler_stepping.LocalSchedulerStepping`.
    """

    # Set by the host's configure_local_learning.
    aux_heads: torch.nn.ModuleDict
    _local_modules: tuple[torch.nn.Module, ...]
    _local_head: tuple[torch.nn.Module]
    _local_momentum_heads: tuple[Any, ...]
    _local_step_dropped: bool
    _local_clip: tuple[float | None, str]
    _local_stepped: bool
    _local_epoch_finished: bool

    def shard_units(self) -> list[torch.nn.Module]:
        """The FSDP2 units beyond the backbone (:mod:`lightning_regs.tasks.sharding`): each local module's entries,
        the last module's head, then each auxiliary head's own units (a momentum head's ``ema`` before the head)."""
        from lightning_regs.tasks.sharding import declared_units  # tasks import local learning: import when sharding

        units = [entry for module in getattr(self, "_local_modules", None) or () for entry in module]
        units += getattr(self, "_local_head", None) or ()
        aux_heads = getattr(self, "aux_heads", None)
        if isinstance(aux_heads, torch.nn.ModuleDict):
            units += [unit for head in aux_heads.values() for unit in declared_units(head)]
        return units

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
