"""StableAdamW: AdamW whose step on each tensor is shrunk when the tensor's update is large (Wortsman et al., 2023).

The update clipping of "Stable and low-precision training for large-scale vision-language models" (NeurIPS 2023),
as INP-Former's official training uses it: per tensor, ``u = g / (sqrt(v̂) + eps)`` with the *current* gradient
``g`` and Adam's bias-corrected second moment ``v̂`` (its running maximum with ``amsgrad``); the step size
``lr / (1 - β1^t)`` is divided by ``max(1, RMS(u) / clip_threshold)``. Weight decay is decoupled and unclipped:
``p ← p (1 - lr · weight_decay)`` before the step. With ``clip_threshold = inf`` this is exactly
``torch.optim.AdamW``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from typing_extensions import override

from lightning_regs.functional._checks import check_bool, check_number

__all__ = ["StableAdamW"]


class StableAdamW(torch.optim.Optimizer):
    """AdamW with per-tensor update clipping (see the module docstring for the equations).

    Args:
        params: the parameters (or parameter groups) to optimize.
        lr: the learning rate.
        betas: the running averages' coefficients ``(β1, β2)``.
        eps: added to ``sqrt(v̂)``.
        weight_decay: decoupled weight decay (``p ← p (1 - lr · weight_decay)``).
        amsgrad: use the running maximum of ``v̂`` (AMSGrad).
        clip_threshold: the update RMS above which the step is shrunk (1.0 as the official code).

    Example::

        >>> weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        >>> optimizer = StableAdamW([weight], lr=0.1, weight_decay=0.0, clip_threshold=0.5)
        >>> weight.grad = torch.tensor([3.0, -4.0])
        >>> optimizer.step()  # first step: u = sign(g) (RMS 1), so the step is lr / 2 per coordinate
        >>> weight.data
        tensor([ 0.9500, -1.9500])
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        clip_threshold: float = 1.0,
    ) -> None:
        owner = type(self).__name__
        check_number(owner, "lr", lr, low=0.0)
        check_number(owner, "eps", eps, low=0.0)
        check_number(owner, "weight_decay", weight_decay, low=0.0)
        check_bool(owner, "amsgrad", amsgrad)
        check_number(owner, "clip_threshold", clip_threshold, low=0.0, low_open=True)
        if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"{owner}: betas must be two numbers in [0, 1), got {betas!r}.")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "amsgrad": amsgrad,
                    "clip_threshold": clip_threshold}  # fmt: skip
        super().__init__(params, defaults)

    @override
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if grad.is_sparse:
                    raise RuntimeError("StableAdamW does not support sparse gradients.")
                state = self.state[param]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                step = int(state["step"])
                param.mul_(1 - group["lr"] * group["weight_decay"])
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                second = state["exp_avg_sq"]
                if group["amsgrad"]:
                    torch.maximum(state["max_exp_avg_sq"], second, out=state["max_exp_avg_sq"])
                    second = state["max_exp_avg_sq"]
                denominator = (second.sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
                update_rms = float((grad / denominator).pow(2).mean().sqrt())
                shrink = max(1.0, update_rms / group["clip_threshold"])
                step_size = group["lr"] / (1 - beta1**step) / shrink
                param.addcdiv_(state["exp_avg"], denominator, value=-step_size)
        return loss
