"""The training loop of supervised local learning, as a LightningModule mixin."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import nn

from lightning_regs.functional.classification import classification_loss
from lightning_regs.local_learning.splits import module_ranges

__all__ = ["LocalLearningMixin"]


class LocalLearningMixin(pl.LightningModule):
    """Train a layered network as K gradient-isolated modules, each by its own auxiliary loss.

    Per training batch, for each of the first ``K - 1`` modules in turn: forward, local loss through its
    auxiliary head, :meth:`manual_backward` at once (its graph is freed here, which is the whole memory
    saving), then detach the output before the next module. The last module trains through the real
    classifier head. One optimizer step covers backbone and heads; per-step LR schedulers are stepped
    here, per-epoch ones at the epoch's end. Under DDP the first ``K - 1`` backwards run inside the
    strategy's ``block_backward_sync()`` and the last outside, so gradients are all-reduced once per step
    (use ``DDPStrategy(find_unused_parameters=True)``).

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
        """
        if len(aux_heads) != len(points):
            raise ValueError(f"{len(points) + 1} modules need {len(points)} auxiliary heads; got {len(aux_heads)}.")
        self.automatic_optimization = False
        self.aux_heads = nn.ModuleDict({str(j): aux for j, aux in enumerate(aux_heads)})
        # Tuples: views on layers registered elsewhere, not new submodules.
        self._local_modules = tuple(layers[a:b] for a, b in module_ranges(points, len(layers)))
        self._local_head = (head,)
        self._local_clip = (gradient_clip_val, gradient_clip_algorithm)

    @property
    def num_local_modules(self) -> int:
        """K, the number of gradient-isolated modules."""
        return len(self._local_modules)

    def _check_can_train_locally(self) -> None:
        if self.automatic_optimization:
            raise RuntimeError(
                f"{type(self).__name__} trains with manual optimization (one backward per module); "
                "automatic_optimization was turned back on. Leave it False."
            )
        strategy = self.trainer.strategy
        is_deepspeed = "deepspeed" in type(strategy).__name__.lower()
        if is_deepspeed or not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
            raise RuntimeError(
                f"Local learning runs several backwards per step, which only single-device and DDP strategies "
                f"support; got {type(strategy).__name__}. Use strategy='auto' on one device, or "
                "DDPStrategy(find_unused_parameters=True) (or 'ddp_find_unused_parameters_true')."
            )

    def local_backward(
        self,
        image: torch.Tensor,
        target: torch.Tensor,
        label_smoothing: float = 0.0,
        backward: Callable[[torch.Tensor], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Forward and backward module by module; returns the detached final loss, logits and local losses.

        ``backward`` defaults to :meth:`manual_backward` (inside ``block_backward_sync()`` for all but the last
        module); pass ``torch.Tensor.backward`` to run the loop without a Trainer (e.g. to measure memory).
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
        loss = classification_loss(logits, target, label_smoothing)
        run_backward(loss)
        return loss.detach(), logits.detach(), local_losses

    def local_training_step(
        self, image: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """One optimizer step of local learning; returns the detached final loss, logits and local losses."""
        self._check_can_train_locally()
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        loss, logits, local_losses = self.local_backward(image, target, label_smoothing)
        clip_val, clip_algorithm = self._local_clip
        if clip_val is not None:
            self.clip_gradients(optimizer, gradient_clip_val=clip_val, gradient_clip_algorithm=clip_algorithm)
        optimizer.step()
        self._step_schedulers("step")
        for j, loss_j in enumerate(local_losses):
            self.log(f"local/loss{j}", loss_j)
        return loss, logits, local_losses

    def _step_schedulers(self, interval: str) -> None:
        for config in self.trainer.lr_scheduler_configs:
            if config.interval != interval:
                continue
            count = self.trainer.global_step if interval == "step" else self.trainer.current_epoch + 1
            if count % config.frequency == 0:
                config.scheduler.step()

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self._step_schedulers("epoch")

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict without the auxiliary heads: what inference needs."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("aux_heads.")}
