"""Projected gradient descent (Madry et al., 2018) in ℓ∞ and ℓ2, and the robust accuracy it measures.

The attack maximises the cross-entropy of the true class inside the ε-ball around each input. ε and
the step size are in the units the model sees (after normalization). Gradients are taken with respect
to the perturbation only (parameters' ``.grad`` are never touched); the random start comes from a
private generator, so the global RNG is left as found; the model runs in eval mode in float32 with
autocast disabled, and every submodule's training flag is restored afterwards.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lightning_regs.functional.outputs import logits_of
from lightning_regs.modes import eval_mode

__all__ = ["Norm", "pgd_attack", "predict", "random_perturbation", "robust_accuracy"]

Norm = Literal["linf", "l2"]


def _per_sample_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))


def _project(delta: torch.Tensor, epsilon: float, norm: Norm) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-epsilon, epsilon)
    return delta * (epsilon / _per_sample_norm(delta)).clamp(max=1.0)


def random_perturbation(
    inputs: torch.Tensor, epsilon: float, norm: Norm = "linf", generator: torch.Generator | None = None
) -> torch.Tensor:
    """A perturbation uniform in the ε-ball (ℓ∞ cube or ℓ2 ball) per input, drawn from ``generator``.

    Example::

        >>> delta = random_perturbation(torch.zeros(3, 4), 0.5, "l2")
        >>> bool((delta.norm(dim=1) <= 0.5 + 1e-6).all())
        True
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    shape = inputs.shape
    if norm == "linf":
        noise = torch.rand(shape, generator=generator, dtype=torch.float32) * 2 - 1
        return (noise * epsilon).to(inputs)
    # Uniform in the ℓ2 ball: a Gaussian direction times a radius distributed as U^(1/d).
    direction = torch.randn(shape, generator=generator, dtype=torch.float32)
    direction = direction / _per_sample_norm(direction)
    dim = inputs[0].numel()
    radius = torch.rand(shape[0], generator=generator, dtype=torch.float32) ** (1.0 / dim)
    return (direction * radius.view(-1, *([1] * (len(shape) - 1))) * epsilon).to(inputs)


def pgd_attack(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    epsilon: float,
    step_size: float,
    steps: int,
    norm: Norm = "linf",
    random_start: bool = True,
    generator: torch.Generator | None = None,
    input_range: tuple[float, float] | None = None,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Adversarial examples ``inputs + δ`` with ``‖δ‖ ≤ ε`` found by ``steps`` steps of PGD.

    Each step moves ``δ`` by ``step_size`` along the sign of the gradient (ℓ∞) or the normalized
    gradient (ℓ2) of the cross-entropy, then projects back onto the ε-ball (and into ``input_range``).

    Args:
        model: maps ``inputs`` to logits: a Tensor, a dict with ``"logits"`` or an object with ``.logits``
            (:func:`~lightning_regs.functional.outputs.logits_of`).
        inputs: ``(N, ...)`` clean inputs.
        targets: ``(N,)`` true class ids.
        epsilon: radius of the threat model's ball.
        step_size: length of each step (in the attack's norm).
        steps: number of steps (0 returns the start point).
        norm: ``"linf"`` or ``"l2"``.
        random_start: start uniformly inside the ball (drawn from ``generator``) instead of at ``inputs``.
        generator: private generator of the random start (seeded 0 when ``None``).
        input_range: clamp the adversarial inputs to ``[low, high]`` (the valid data range), if given:
            the start point and every step.
        start: an explicit initial perturbation instead of the random one (e.g. drawn for a whole set
            and sliced per rank, so sharded attacks match a single-process one).

    Example::

        >>> model = nn.Linear(2, 2)
        >>> x, y = torch.zeros(4, 2), torch.tensor([0, 1, 0, 1])
        >>> x_adv = pgd_attack(model, x, y, epsilon=0.1, step_size=0.05, steps=5)
        >>> bool((x_adv - x).abs().max() <= 0.1 + 1e-6)
        True
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"Unknown norm {norm!r}: use 'linf' or 'l2'.")
    if epsilon < 0 or step_size < 0 or steps < 0:
        raise ValueError(f"epsilon ({epsilon}), step_size ({step_size}) and steps ({steps}) must be non-negative.")
    inputs = inputs.detach().float()
    targets = targets.detach().to(inputs.device)
    if start is not None:
        delta = _project(start.detach().to(inputs), epsilon, norm)
    elif random_start:
        delta = random_perturbation(inputs, epsilon, norm, generator)
    else:
        delta = torch.zeros_like(inputs)
    if input_range is not None:  # the first gradient is taken at a valid input, as the official code does
        delta = (inputs + delta).clamp(*input_range) - inputs
    with eval_mode(model), torch.enable_grad(), torch.autocast(inputs.device.type, enabled=False):
        for _ in range(steps):
            delta.requires_grad_(True)
            logits = logits_of(model(inputs + delta), "pgd_attack's model")
            loss = F.cross_entropy(logits, targets, reduction="sum")
            (gradient,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                if norm == "linf":
                    delta = delta + step_size * gradient.sign()
                else:
                    delta = delta + step_size * gradient / _per_sample_norm(gradient)
                delta = _project(delta, epsilon, norm)
                if input_range is not None:
                    delta = (inputs + delta).clamp(*input_range) - inputs
    adversarial = inputs + delta.detach()
    return adversarial.clamp(*input_range) if input_range is not None else adversarial


def robust_accuracy(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    epsilon: float,
    step_size: float,
    steps: int,
    norm: Norm = "linf",
    random_start: bool = True,
    generator: torch.Generator | None = None,
    input_range: tuple[float, float] | None = None,
    batch_size: int = 1024,
) -> float:
    """The share of ``inputs`` still classified correctly after :func:`pgd_attack` (same arguments).

    Example::

        >>> model = nn.Linear(2, 2)
        >>> x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
        >>> 0.0 <= robust_accuracy(model, x, y, epsilon=0.1, step_size=0.05, steps=3) <= 1.0
        True
    """
    correct = 0
    for begin in range(0, inputs.shape[0], batch_size):
        x, y = inputs[begin : begin + batch_size], targets[begin : begin + batch_size]
        adversarial = pgd_attack(model, x, y, epsilon, step_size, steps, norm, random_start, generator, input_range)
        correct += int(predict(model, adversarial).eq(y.to(adversarial.device)).sum())
    return correct / max(inputs.shape[0], 1)


def predict(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Class ids the model predicts for ``inputs`` in eval mode, without gradients; training flags restored.

    The model may return logits, a dict with ``"logits"`` or an object with ``.logits``.

    Example::

        >>> predict(nn.Linear(2, 3), torch.zeros(4, 2)).shape
        torch.Size([4])
    """
    with eval_mode(model), torch.no_grad(), torch.autocast(inputs.device.type, enabled=False):
        return logits_of(model(inputs.float()), "predict's model").argmax(dim=-1)
