"""The local learning coefficient (LLC) λ̂ at a point ``w*`` of weight space, by SGLD localised at ``w*``.

Lau, Furman, Wang, Murfet and Wei, "Quantifying degeneracy in singular models via the learning coefficient"
(2023). With ``L_m(w)`` the mean loss on the minibatch ``m``, ``nβ`` the inverse temperature times the
training-set size, ``γ`` the localisation strength and ``ε`` the step size, every chain starts at ``w*`` and
takes the steps

    w ← w − (ε/2)·(nβ·∇L_m(w) + γ·(w − w*)) + √ε·ξ,   ξ ~ N(0, I)

(one minibatch per step). After ``num_burnin`` steps each of the ``num_draws`` steps records ``L_m(w_t)``,
computed *before* the step on that step's minibatch, and the estimate is

    λ̂ = nβ·(mean over chains and draws of L_m(w_t) − L(w*)).

``L(w*)`` here is the mean over the same draws of ``L_m(w*)``, each on the very minibatch its draw used: the
estimate is the mean of the paired differences ``L_m(w_t) − L_m(w*)``, so minibatch-to-minibatch variation of
the loss (which ``nβ`` multiplies) cancels instead of adding to the Monte-Carlo error, and ``L(w*)`` is the loss at
``w*`` over exactly the data the draws saw (the full-data loss when they cover the data evenly). It costs one
forward pass at ``w*`` per draw; with a list or tuple of minibatches, one per distinct minibatch (cached).

``nβ`` moves λ̂ a lot: Lau et al. use ``n/log n`` with ``n`` the training-set size (:func:`default_n_beta`),
devinterp defaults to ``B/log B`` with ``B`` the batch size; pass the value and report it. For a quadratic
``L(w) = ½·Σ h_i (w − w*)_i²`` the stationary ``E[nβ·L]`` is ``½·Σ nβh_i / (nβh_i + γ)``, ``d/2`` at ``γ = 0``:
the LLC of a regular model; degenerate directions give less. The chains draw only from a private generator.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch

__all__ = ["LLCEstimate", "default_n_beta", "estimate_llc"]

# A chain is flagged as still rising when the least-squares rise over the second half of its trace exceeds this many
# residual standard deviations. A stationary chain whose half-trace spans many autocorrelation times stays far below
# (simulated AR(1) traces of squared Gaussians: no false alarm in 2000 at 4 once the half spans 10 autocorrelation
# times); a half-trace shorter than its autocorrelation time has not mixed and may be flagged, rightly.
_RISE_RATIO = 4.0
_BOUND_SPREADS = 4.0  # standard deviations of a chain's draws allowed above d/2 (see _above_bound)
_MIN_TREND_DRAWS = 10  # the trend test needs at least this many draws in the second half
_CHECK_EVERY = 16  # steps between checks for a non-finite loss (each check synchronises a GPU)


class LLCEstimate(NamedTuple):
    """What :func:`estimate_llc` returns.

    Attributes:
        llc: λ̂, the mean of ``per_chain``; NaN when a chain's loss became non-finite (see ``diverged``).
        llc_std: the standard deviation (``ddof=1``) of ``per_chain``; NaN for a single chain.
        per_chain: ``(C,)`` float64, each chain's ``nβ·(mean of its L_m(w_t) − mean of its L_m(w*))``.
        loss_trace: ``(C, num_draws)`` float64, ``L_m(w_t)`` at each draw (NaN after a chain stopped).
        init_loss: ``L(w*)``, the mean of ``L_m(w*)`` over the minibatches of all draws.
        n_beta: the ``nβ`` used.
        diverged: ``(C,)`` bool, chains whose loss became non-finite, was still rising over the second half, or whose
            λ̂ is impossibly high (see :func:`estimate_llc`).
        reasons: ``C`` strings, why each chain was flagged (``""`` when it was not).
        trace_rise: ``(C,)`` float64, the least-squares rise of each chain's loss over the second half of its draws,
            in standard deviations of the residuals (above 4 flags the chain; NaN when the half has fewer than 10
            draws or the chain diverged). Near 0 for a settled chain.
    """

    llc: float
    llc_std: float
    per_chain: torch.Tensor
    loss_trace: torch.Tensor
    init_loss: float
    n_beta: float
    diverged: torch.Tensor
    reasons: tuple[str, ...]
    trace_rise: torch.Tensor

    def summary(self) -> str:
        """One line: λ̂ ± std, nβ, and the flagged chains with their reasons."""
        text = f"llc {self.llc:.4g} ± {self.llc_std:.3g} over {self.per_chain.numel()} chains (nβ = {self.n_beta:.4g})"
        flagged = [f"chain {c}: {reason}" for c, reason in enumerate(self.reasons) if reason]
        return text + ("; " + "; ".join(flagged) if flagged else "")


def default_n_beta(n: int) -> float:
    """Lau et al.'s ``nβ = n / log n`` for a training set of ``n > 1`` samples (β = 1/log n).

    Example::

        >>> round(default_n_beta(1000), 2)
        144.76
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 1:
        raise ValueError(f"default_n_beta needs the training-set size n as an integer above 1, got {n!r}.")
    return int(n) / math.log(n)


def _check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}.")
    return value


def _check_count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}.")
    return value


class _Batches:
    """Hands each chain its minibatches: a fresh pass per chain, restarted when it ends (see :func:`estimate_llc`)."""

    def __init__(self, batches: Iterable[Any] | Callable[[], Iterable[Any]]) -> None:
        self.sequence: Sequence[Any] | None = None
        self.factory: Callable[[], Iterable[Any]] | None = None
        self.shared: Iterator[Any] | None = None
        if isinstance(batches, Sequence) and not isinstance(batches, (str, bytes)):
            if len(batches) == 0:
                raise ValueError("batches is empty; give at least one minibatch.")
            self.sequence = batches
        elif isinstance(batches, Iterable):
            if iter(batches) is batches:  # a one-shot iterator: every chain continues the same stream
                self.shared = batches  # type: ignore[assignment]
            else:
                self.factory = lambda: batches  # type: ignore[assignment,return-value]
        elif callable(batches):
            self.factory = batches
        else:
            raise TypeError(
                f"batches must be a list of minibatches, a re-iterable (a DataLoader), an iterator or a function "
                f"returning an iterable; got {type(batches).__name__}."
            )

    def chain(self) -> Iterator[tuple[int | None, Any]]:
        """``(position in the sequence or None, batch)`` pairs for one chain, endless."""
        if self.sequence is not None:
            for index in itertools.count():
                position = index % len(self.sequence)
                yield position, self.sequence[position]
        if self.shared is not None:
            yield from ((None, batch) for batch in self.shared)
            raise ValueError(
                "batches is a one-shot iterator and ran out; every step of every chain takes one minibatch. Pass a "
                "list, a DataLoader or a function returning an iterator (these are restarted as needed), or a longer "
                "iterator (itertools.cycle)."
            )
        while True:
            empty = True
            for batch in self.factory():  # type: ignore[misc]
                empty = False
                yield None, batch
            if empty:
                raise ValueError("batches gave no minibatch; give at least one.")


def _scalar_loss(loss_fn: Callable[..., torch.Tensor], params: dict[str, torch.Tensor], batch: Any) -> torch.Tensor:
    loss = loss_fn(params, batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            f"loss_fn must return a scalar floating tensor (the minibatch's mean loss), got {shape}; reduce it "
            "with .mean()."
        )
    return loss.reshape(())


def _finite_loss_at_optimum(loss: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(loss):
        raise ValueError(
            f"loss_fn is {float(loss.detach())} at the given params ({what}): λ̂ is measured around a point of finite "
            "loss. Check the params and the data."
        )
    return loss.detach()


def _rise_ratio(trace: torch.Tensor) -> float:
    """Least-squares rise over ``trace`` in units of the residuals' standard deviation."""
    t = torch.arange(trace.numel(), dtype=torch.float64)
    t = t - t.mean()
    centred = trace - trace.mean()
    slope = (centred * t).sum() / (t * t).sum()
    spread = (centred - slope * t).std()
    rise = slope * (trace.numel() - 1)
    if spread == 0:
        return math.inf if rise > 0 else 0.0
    return float(rise / spread)


def _trace_rise(steps: torch.Tensor, num_burnin: int) -> float:
    """The rise ratio over the second half of a chain's draws; NaN when it is too short or not finite."""
    second_half = steps[num_burnin:][(steps.numel() - num_burnin) // 2 :]
    if second_half.numel() < _MIN_TREND_DRAWS or not bool(torch.isfinite(second_half).all()):
        return math.nan
    return _rise_ratio(second_half)


def _diagnose(steps: torch.Tensor, num_burnin: int, rise: float) -> str:
    bad = (~torch.isfinite(steps)).nonzero()
    if bad.numel():
        step = int(bad[0])
        where = f"burn-in step {step}" if step < num_burnin else f"draw {step - num_burnin}"
        return f"loss non-finite from {where} on: lower step_size or raise localization"
    if rise > _RISE_RATIO:
        return (
            f"loss still rising over the second half of the draws ({rise:.1f} residual std): not stationary; "
            "lower step_size, raise localization or add burn-in"
        )
    return ""


def _above_bound(chain_llc: float, dimension: int, draw_spread: float) -> str:
    # A learning coefficient is at most d/2 (a regular model's). A chain's estimate is a mean of nβ·(L_m(w_t) −
    # L_m(w*)) over its draws, so even with a single effective draw it lies within a few of their standard deviations
    # (draw_spread) of its expectation: d/2 plus 4 of them, or d, is no Monte-Carlo error but a chain that left w*'s
    # neighbourhood or a step too large for the curvature (the discretised chain overshoots).
    limit = min(dimension / 2 + _BOUND_SPREADS * draw_spread, float(dimension))
    if chain_llc > limit:
        return (
            f"its λ̂ ({chain_llc:.4g}) is above d/2 = {dimension / 2:g}, the largest learning coefficient, by more "
            f"than its draws' spread allows (limit {limit:.4g}): the chain left w*'s neighbourhood or the step is "
            "too large; lower step_size or raise localization"
        )
    return ""


def estimate_llc(
    loss_fn: Callable[[dict[str, torch.Tensor], Any], torch.Tensor],
    params: Mapping[str, torch.Tensor],
    batches: Iterable[Any] | Callable[[], Iterable[Any]],
    *,
    num_chains: int = 4,
    num_draws: int = 100,
    num_burnin: int = 0,
    step_size: float = 1e-3,
    n_beta: float,
    localization: float = 0.0,
    generator: torch.Generator | None = None,
) -> LLCEstimate:
    """Estimate the local learning coefficient λ̂ at ``params`` (``w*``) with localised SGLD.

    The update and the estimator are in the module docstring. ``params`` is never modified: each chain samples
    clones of its floating tensors that require grad, and every other tensor (a frozen parameter, an integer
    buffer) is handed to ``loss_fn`` as given, so it stays at ``w*``. Gradients are taken with autograd under
    ``torch.enable_grad()`` (also inside ``torch.no_grad()``). Put the model in eval mode first: a BatchNorm in
    training mode would update its running statistics at every step.

    **Minibatches.** Every step (burn-in and draw) takes the next minibatch. A list or tuple, or a re-iterable such
    as a ``DataLoader``, or a zero-argument function returning an iterable, is read from its start by every chain
    and restarted when it ends, so with a list every chain sees the same sequence. A one-shot iterator is one
    stream shared by the chains in turn (chain 0 takes the first ``num_burnin + num_draws``), and running out of
    it is an error. A shuffling ``DataLoader`` draws its order from the global RNG unless given its own
    generator; this function's own draws (the noise) come only from ``generator``.

    Args:
        loss_fn: ``loss_fn(params_dict, batch) -> scalar``, the mean loss of the minibatch, differentiable in
            the tensors of ``params_dict`` (which has every key of ``params``).
        params: ``w*``, a dict name → tensor (``dict(model.named_parameters())``).
        batches: the minibatches (see above).
        num_chains: independent chains ``C``.
        num_draws: draws per chain, recorded after the burn-in.
        num_burnin: steps per chain before the first draw.
        step_size: ``ε``.
        n_beta: ``nβ`` (:func:`default_n_beta` for ``n / log n``).
        localization: ``γ``, the pull back to ``w*``.
        generator: the private generator of the noise; when ``None``, a fresh one seeded 0 on the device of the
            first sampled tensor. The noise is drawn on the generator's device and copied to each tensor's.

    Returns:
        :class:`LLCEstimate`. A chain whose loss turns non-finite stops there (its trace and ``per_chain`` entry
        are NaN, and so are ``llc`` and ``llc_std``). A chain is also flagged when, over the second half of its
        draws (at least 10), the least-squares rise of the loss exceeds 4 standard deviations of the residuals
        (``trace_rise``): it has not settled (too large a step, too weak a localisation along flat directions, too
        short a burn-in; the localisation alone relaxes in about ``2 / (step_size · localization)`` steps). A chain
        whose λ̂ is above ``d/2`` (the most a learning coefficient can be, ``d`` the count of sampled numbers) by
        more than 4 standard deviations of its draws' ``nβ·(L_m(w_t) − L_m(w*))``, or above ``d``, left ``w*``'s
        neighbourhood or overshoots (too large a step) and is flagged too. ``diverged`` and ``reasons`` say which
        chains to distrust; flagged finite chains still count in ``llc``.

    Example::

        >>> from torch import nn
        >>> from torch.func import functional_call
        >>> import torch.nn.functional as F
        >>> model = nn.Linear(3, 2).eval()
        >>> data = torch.Generator().manual_seed(0)
        >>> batches = [(torch.randn(16, 3, generator=data), torch.randint(2, (16,), generator=data)) for _ in range(4)]
        >>> def loss_fn(params, batch):
        ...     inputs, targets = batch
        ...     return F.cross_entropy(functional_call(model, params, (inputs,)), targets)
        >>> estimate = estimate_llc(
        ...     loss_fn, dict(model.named_parameters()), batches, num_chains=2, num_draws=50,
        ...     step_size=1e-3, n_beta=default_n_beta(64), localization=10.0,
        ... )
        >>> estimate.per_chain.shape, estimate.loss_trace.shape, math.isfinite(estimate.llc)
        (torch.Size([2]), torch.Size([2, 50]), True)
    """
    n_beta = _check_positive("n_beta", n_beta)
    step_size = _check_positive("step_size", step_size)
    localization = _check_positive("localization", localization, allow_zero=True)
    num_chains = _check_count("num_chains", num_chains, 1)
    num_draws = _check_count("num_draws", num_draws, 1)
    num_burnin = _check_count("num_burnin", num_burnin, 0)
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict name → tensor (dict(model.named_parameters())), got {type(params)}.")
    for name, tensor in params.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"params[{name!r}] is a {type(tensor).__name__}, not a tensor.")
    optimum = {name: tensor.detach() for name, tensor in params.items()}
    sampled = [
        name for name, tensor in params.items() if tensor.is_floating_point() and tensor.requires_grad
    ]  # the tensors of w* that move; all others are passed as given
    if not sampled:
        raise ValueError(
            "No parameter to sample: estimate_llc moves the floating tensors of params that require grad, and none "
            "does. Pass dict(model.named_parameters()) with requires_grad=True on the parameters to measure."
        )
    fixed = {name: tensor for name, tensor in params.items() if name not in sampled}
    if generator is None:
        generator = torch.Generator(device=optimum[sampled[0]].device).manual_seed(0)
    source = _Batches(batches)
    total_steps = num_burnin + num_draws
    half_step, noise_scale = step_size / 2, math.sqrt(step_size)

    cached_optimum_losses: dict[int, torch.Tensor] = {}

    def loss_at_optimum(position: int | None, batch: Any) -> torch.Tensor:
        if position is not None and position in cached_optimum_losses:
            return cached_optimum_losses[position]
        with torch.no_grad():
            loss = _finite_loss_at_optimum(_scalar_loss(loss_fn, {**fixed, **optimum}, batch), "a draw's minibatch")
        if position is not None:
            cached_optimum_losses[position] = loss
        return loss

    step_losses = torch.full((num_chains, total_steps), math.nan, dtype=torch.float64)
    optimum_losses = torch.full((num_chains, num_draws), math.nan, dtype=torch.float64)
    for chain in range(num_chains):
        weights = {name: optimum[name].clone().requires_grad_(True) for name in sampled}
        recorded: list[torch.Tensor] = []
        at_optimum: list[torch.Tensor] = []
        # range first: once it ends, zip stops without taking a minibatch from a shared stream
        for step, (position, batch) in zip(range(total_steps), source.chain(), strict=False):
            with torch.enable_grad():
                loss = _scalar_loss(loss_fn, {**fixed, **weights}, batch)
                if chain == 0 and step == 0:  # the chain starts at w*: this is L_m(w*), checked once before sampling
                    first = _finite_loss_at_optimum(loss, "its first minibatch")
                    if position is not None:
                        cached_optimum_losses[position] = first
                if not loss.requires_grad:
                    raise ValueError("loss_fn's value does not depend on params; it must use the tensors it is given.")
                gradients = torch.autograd.grad(loss, [weights[name] for name in sampled], allow_unused=True)
            recorded.append(loss.detach())
            if step >= num_burnin:
                at_optimum.append(loss_at_optimum(position, batch))
            with torch.no_grad():
                for name, gradient in zip(sampled, gradients, strict=True):
                    weight = weights[name]
                    drift = weight - optimum[name] if localization else None
                    if gradient is not None:
                        weight.sub_(gradient, alpha=half_step * n_beta)
                    if drift is not None:
                        weight.sub_(drift, alpha=half_step * localization)
                    noise = torch.randn(weight.shape, generator=generator, dtype=weight.dtype, device=generator.device)
                    weight.add_(noise.to(weight.device), alpha=noise_scale)
            if (step + 1) % _CHECK_EVERY == 0 and not torch.isfinite(torch.stack(recorded[-_CHECK_EVERY:])).all():
                break  # the chain diverged: the rest of its steps stay NaN
        losses = torch.stack(recorded).to("cpu", torch.float64)
        step_losses[chain, : losses.numel()] = losses
        if at_optimum:
            optimum_losses[chain, : len(at_optimum)] = torch.stack(at_optimum).to("cpu", torch.float64)

    loss_trace = step_losses[:, num_burnin:]
    per_chain = n_beta * (loss_trace.mean(dim=1) - optimum_losses.mean(dim=1))
    per_chain[~torch.isfinite(per_chain)] = math.nan
    dimension = sum(optimum[name].numel() for name in sampled)
    rises = torch.tensor([_trace_rise(step_losses[chain], num_burnin) for chain in range(num_chains)])
    # fewer draws give no spread to trust: those chains are only held to d
    spreads = n_beta * (loss_trace - optimum_losses).std(dim=1) if num_draws >= _MIN_TREND_DRAWS else None
    reasons = tuple(
        _diagnose(step_losses[chain], num_burnin, float(rises[chain]))
        or _above_bound(float(per_chain[chain]), dimension, math.inf if spreads is None else float(spreads[chain]))
        for chain in range(num_chains)
    )
    llc_std = float(per_chain.std()) if num_chains > 1 else math.nan
    return LLCEstimate(
        llc=float(per_chain.mean()),
        llc_std=llc_std,
        per_chain=per_chain,
        loss_trace=loss_trace,
        init_loss=float(optimum_losses.nanmean()),
        n_beta=n_beta,
        diverged=torch.tensor([bool(reason) for reason in reasons]),
        reasons=reasons,
        trace_rise=rises.double(),
    )
