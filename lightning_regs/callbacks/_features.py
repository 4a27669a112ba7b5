"""What the representation monitors read: the classifier of a model, and layer features from chunked eval forwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from lightning_regs.callbacks.scheduled_monitor import ScheduledMonitor
from lightning_regs.modes import eval_mode

__all__ = ["FeatureTap", "chunked_features", "find_classifier", "full_tensor", "gathered_features"]


def find_classifier(module: nn.Module) -> tuple[str, nn.Linear]:
    """``(name, module)`` of the final ``nn.Linear`` of ``module``: the classifier whose input is the feature vector.

    The rule: the last ``nn.Linear`` (in registration order) inside ``backbone.head`` when ``module`` has that
    (lightning_regs tasks and layered models), else inside ``head``, else inside ``module`` itself (torchvision's
    ``fc``, ``classifier.6``, ``heads.head``); ``module`` may itself be the ``nn.Linear``. A module whose last
    registered ``Linear`` is not the one that produces the logits needs the classifier named explicitly.

    Example::

        >>> from lightning_regs.models import SmallCNN
        >>> name, linear = find_classifier(nn.ModuleDict({"backbone": SmallCNN(width=8)}))
        >>> name, linear.in_features
        ('backbone.head.2', 16)
    """
    if isinstance(module, nn.Linear):
        return "", module
    for prefix in ("backbone.head", "head"):
        try:
            scope = module.get_submodule(prefix)
        except AttributeError:
            continue
        break
    else:
        prefix, scope = "", module
    linears = [(name, sub) for name, sub in scope.named_modules() if isinstance(sub, nn.Linear)]
    if not linears:
        where = f"{type(module).__name__}.{prefix}" if prefix else type(module).__name__
        raise ValueError(
            f"Found no nn.Linear classifier in {where}: name the module whose input is the feature vector and whose "
            "output is the logits (e.g. submodule='net.fc')."
        )
    name, linear = linears[-1]
    return ".".join(part for part in (prefix, name) if part), linear


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` whole: an FSDP2-sharded ``DTensor`` is gathered (a collective every rank must join)."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


class FeatureTap:
    """Reads a module's input (``read="input"``, a forward pre-hook) or output, flattened per sample, each forward."""

    def __init__(self, name: str, module: nn.Module, read: str = "output") -> None:
        if read not in ("input", "output"):
            raise ValueError(f"read must be 'input' or 'output', got {read!r}.")
        self.name, self.module, self.read = name, module, read
        self.value: torch.Tensor | None = None
        self.output: Any = None
        self.calls = 0

    def _input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.read == "input":
            self._keep(args[0] if args else None)

    def _output(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.output, self.calls = output, self.calls + 1
        if self.read == "output":
            self._keep(output)

    def _keep(self, value: Any) -> None:
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"The {self.read} of {self.name!r} is a {type(value).__name__}, not a tensor: measure a module whose "
                f"{self.read} is one tensor of features."
            )
        self.value = value.detach().reshape(value.shape[0], -1)

    def attach(self, stack: ExitStack) -> None:
        stack.callback(self.module.register_forward_pre_hook(self._input).remove)
        stack.callback(self.module.register_forward_hook(self._output).remove)

    def take(self) -> torch.Tensor:
        """The features of the last forward; exactly one call of the module per forward is expected."""
        if self.calls != 1:
            raise RuntimeError(
                f"{self.name!r} ran {self.calls} times in one forward of the model; the monitor reads a module that "
                "runs once per forward (name another one)."
            )
        value, self.value, self.calls = self.value, None, 0
        return value


def chunked_features(
    model: nn.Module, images: torch.Tensor, taps: list[FeatureTap], batch_size: int, device: torch.device
) -> Iterator[tuple[int, Any]]:
    """Run ``model`` over ``images`` in chunks (eval mode, no gradients, autocast off); yield ``(begin, output)``.

    After each yield the taps hold that chunk's features (:meth:`FeatureTap.take`). Training flags and hooks are
    restored afterwards, also when the model raises.
    """
    parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = parameter.dtype if parameter is not None and parameter.dtype == torch.float64 else torch.float32
    with ExitStack() as stack:
        for tap in taps:
            tap.attach(stack)
        stack.enter_context(eval_mode(model))
        stack.enter_context(torch.no_grad())
        stack.enter_context(torch.autocast(device.type, enabled=False))
        for begin in range(0, images.shape[0], batch_size):
            yield begin, model(images[begin : begin + batch_size].to(device=device, dtype=dtype))


def gathered_features(
    trainer: Any, model: nn.Module, taps: list[FeatureTap], images: torch.Tensor, batch_size: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Every tap's features ``(N, d)`` (float32, CPU) of all of ``images``, in their order, on every rank.

    Each rank runs the forwards of its even shard (items ``r, r + W, ...``, padded so that every rank runs as many:
    FSDP2's forwards gather parameters), and the shards are all-gathered and put back in the images' order.
    """
    shard, _ = ScheduledMonitor.even_shard(trainer, images)  # the padding's rows are dropped after the gather
    chunks: dict[str, list[torch.Tensor]] = {tap.name: [] for tap in taps}
    for _ in chunked_features(model, shard, taps, batch_size, device):
        for tap in taps:
            chunks[tap.name].append(tap.take().float())
    features = {name: torch.cat(parts) for name, parts in chunks.items()}
    if trainer.world_size == 1:
        return {name: value.cpu() for name, value in features.items()}
    gathered = {}
    for name, value in features.items():
        ranks = _all_gather(value)  # (W, rows, d): rank r holds items r, r + W, ...
        gathered[name] = ranks.transpose(0, 1).reshape(-1, value.shape[1])[: images.shape[0]].cpu()
    return gathered


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """``(W, *shape)``: every rank's ``tensor`` (the same shape on each), by the plain collective.

    Not ``trainer.strategy.all_gather``: Lightning routes it through the deprecated autograd ``all_gather`` of
    ``torch.distributed.nn``, which these features (no gradient) do not need.
    """
    parts = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, tensor.contiguous())
    return torch.stack(parts)
