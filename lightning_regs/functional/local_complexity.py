"""Local complexity (LC): how many neurons' linear pieces change inside a small cross-polytope around a point.

Humayun, Balestriero and Baraniuk, "Deep Networks Always Grok and Here is Why" (ICML 2024). Around
each point ``x`` the cross-polytope has the ``2P`` vertices ``x ± r·v_p`` (``P`` directions ``v_p``,
orthonormal when drawn here). All vertices go through the model in one batched forward; for every
hooked layer a neuron is counted when its pre-activation does not lie on the same linear piece of the
activation at all vertices (for ReLU: the sign is not the same everywhere). For a convolution every
channel × position is a neuron. The counts are per point and per layer, so a caller sums over layers
and averages over points.

Layers are, by default, the **inputs** of every piecewise-linear activation module (ReLU family),
captured with forward pre-hooks: this sees the tensor before an in-place ReLU overwrites it, and a
module called twice (torchvision's ``BasicBlock.relu``) gives two layers, ``name`` and ``name#1``.
Activations applied functionally (``F.relu``) are invisible to hooks; pass ``layers`` for those models.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from lightning_regs.functional._checks import check_number
from lightning_regs.modes import eval_mode

__all__ = [
    "LocalComplexity",
    "cross_polytope_vertices",
    "find_piecewise_linear_layers",
    "local_complexity",
    "orthonormal_directions",
]

# The breakpoints of each piecewise-linear activation: a neuron changes region when its input crosses one.
_BREAKPOINTS = {
    nn.ReLU: lambda m: (0.0,),
    nn.LeakyReLU: lambda m: (0.0,),
    nn.PReLU: lambda m: (0.0,),
    nn.RReLU: lambda m: (0.0,),
    nn.ReLU6: lambda m: (0.0, 6.0),
    nn.Hardtanh: lambda m: (float(m.min_val), float(m.max_val)),
    nn.Threshold: lambda m: (float(m.threshold),),
}


class LocalComplexity(NamedTuple):
    """What :func:`local_complexity` returns.

    Attributes:
        counts: ``(N, L)`` int64, the neurons of layer ``l`` whose linear piece changes around point ``n``.
        layer_names: the ``L`` layer names (``name#k`` for the ``k``-th extra call of a reused module).
        num_neurons: neurons per layer (per point), to turn counts into fractions.
        finite: ``(N,)`` bool, whether every hooked value of the point's vertices was finite. Where it is False
            (a NaN or inf point, or a network with non-finite weights) the row of ``counts`` is not a count.
    """

    counts: torch.Tensor
    layer_names: tuple[str, ...]
    num_neurons: tuple[int, ...]
    finite: torch.Tensor | None = None

    def total(self) -> torch.Tensor:
        """``(N,)``: the counts summed over layers (not counts where :attr:`finite` is False)."""
        return self.counts.sum(dim=1)

    def mean_total(self) -> torch.Tensor:
        """The mean over points of :meth:`total`, float64; NaN when any point met a non-finite value."""
        if self.finite is not None and not bool(self.finite.all()):
            return torch.tensor(math.nan, dtype=torch.float64)
        return self.total().to(torch.float64).mean()


def orthonormal_directions(
    shape: Sequence[int] | int, num_directions: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``num_directions`` orthonormal directions in the space of inputs of ``shape``, as ``(P, *shape)``.

    Drawn from ``generator`` (a fresh one seeded 0 when ``None``), never from the global RNG.

    Example::

        >>> v = orthonormal_directions((1, 4, 4), 3)
        >>> v.shape, torch.allclose(v.flatten(1) @ v.flatten(1).T, torch.eye(3), atol=1e-6)
        (torch.Size([3, 1, 4, 4]), True)
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    dim = math.prod(shape)
    if not 1 <= num_directions <= dim:
        raise ValueError(
            f"num_directions={num_directions} orthonormal directions do not fit in an input of {dim} values; "
            f"use between 1 and {dim}."
        )
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    gaussian = torch.randn(dim, num_directions, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # unique, uniformly distributed frame
    return q.T.contiguous().to(torch.float32).reshape(num_directions, *shape)


def cross_polytope_vertices(
    points: torch.Tensor, radius: float, directions: torch.Tensor, include_center: bool = False
) -> torch.Tensor:
    """The ``2P`` vertices ``x + r·v_1, x − r·v_1, ...`` around each point, as ``(N, 2P[+1], *shape)``.

    ``directions`` is ``(P, *shape)`` (shared) or ``(N, P, *shape)`` (one frame per point). With
    ``include_center`` the point itself comes first.

    Example::

        >>> x = torch.zeros(2, 3)
        >>> cross_polytope_vertices(x, 0.5, torch.eye(3)[:2]).shape
        torch.Size([2, 4, 3])
    """
    shape = points.shape[1:]
    if points.dim() < 2 or tuple(directions.shape[-len(shape) :]) != tuple(shape):
        raise ValueError(f"directions {tuple(directions.shape)} do not end in the points' shape {tuple(shape)}.")
    if directions.dim() == len(shape) + 1:
        directions = directions.unsqueeze(0)
    step = radius * directions.to(points.dtype)
    vertices = torch.stack((points.unsqueeze(1) + step, points.unsqueeze(1) - step), dim=2)
    vertices = vertices.reshape(points.shape[0], -1, *shape)
    if include_center:
        vertices = torch.cat((points.unsqueeze(1), vertices), dim=1)
    return vertices


def find_piecewise_linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for every piecewise-linear activation module of ``model`` (ReLU family).

    Example::

        >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(inplace=True), nn.Linear(3, 1), nn.GELU())
        >>> [name for name, _ in find_piecewise_linear_layers(model)]
        ['1']
    """
    return [(name, module) for name, module in model.named_modules() if _breakpoints(module) is not None]


def _breakpoints(module: nn.Module) -> tuple[float, ...] | None:
    for cls in type(module).__mro__:  # subclasses of ReLU & co. count too
        if cls in _BREAKPOINTS:
            return _BREAKPOINTS[cls](module)
    return None


class _RegionChangeCounter:
    """Forward hooks that reduce each call to per-point counts at once (in-place ops cannot corrupt them)."""

    def __init__(self, num_vertices: int) -> None:
        self.num_vertices = num_vertices
        self.calls: list[tuple[str, torch.Tensor, int]] = []
        self.finite: torch.Tensor | None = None  # per point of the chunk: every hooked value finite
        self._seen: dict[str, int] = {}
        self._buffers: dict[str, torch.Tensor] = {}

    def record(self, name: str, values: torch.Tensor, breakpoints: Sequence[float]) -> None:
        if not isinstance(values, torch.Tensor):
            raise TypeError(f"Layer {name!r} received a {type(values).__name__}, not a tensor; pass `layers`.")
        flat = values.detach().reshape(-1, math.prod(values.shape[1:]))
        # A sum over a vertex's neurons is finite iff they all are (inf - inf is NaN): one cheap reduction.
        finite = torch.isfinite(flat.sum(dim=1)).view(-1, self.num_vertices).all(dim=1)
        self.finite = finite if self.finite is None else self.finite & finite
        calls = self._seen.get(name, 0)
        self._seen[name] = calls + 1
        key = name if calls == 0 else f"{name}#{calls}"
        changed = None
        for breakpoint in breakpoints:
            # The piece index (x > b) per vertex, summed over a polytope's vertices, lies strictly between 0 and the
            # vertex count iff the piece changes: several times faster than aminmax over the strided vertex axis.
            # Buffers are reused across chunks (fresh multi-MB tensors cost page faults). On CPU a bool compare
            # summed as uint8 wins on large tensors, clamp(sign) summed as float on small ones (measured).
            inside = self._vertices_above(key, flat, breakpoint)
            crossed = (inside > 0) & (inside < self.num_vertices)
            changed = crossed if changed is None else changed | crossed
        self.calls.append((key, changed.sum(dim=1), changed.shape[1]))

    def _buffer(self, key: str, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        buffer = self._buffers.get(key)
        if buffer is None or buffer.shape != like.shape or buffer.dtype != dtype or buffer.device != like.device:
            buffer = self._buffers[key] = torch.empty(like.shape, dtype=dtype, device=like.device)
        return buffer

    def _vertices_above(self, key: str, flat: torch.Tensor, breakpoint: float) -> torch.Tensor:
        shifted = flat - breakpoint if breakpoint else flat
        if flat.numel() >= 1 << 22 and self.num_vertices < 256:
            above = torch.gt(shifted, 0, out=self._buffer(key, flat, torch.bool)).view(torch.uint8)
            return above.view(-1, self.num_vertices, flat.shape[1]).sum(dim=1, dtype=torch.uint8)
        above = torch.sign(shifted, out=self._buffer(key, flat, flat.dtype)).clamp_(min=0)
        return above.view(-1, self.num_vertices, flat.shape[1]).sum(dim=1)

    def pre_hook(self, name: str, breakpoints: Sequence[float]):
        def hook(module: nn.Module, args: tuple) -> None:
            self.record(name, args[0], breakpoints)

        return hook

    def output_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self.record(name, output, (0.0,))

        return hook


def _resolve_layers(
    model: nn.Module, layers: Sequence[nn.Module | str] | None
) -> list[tuple[str, nn.Module, tuple[float, ...] | None]]:
    names = {module: name for name, module in model.named_modules()}
    if layers is None:
        found = find_piecewise_linear_layers(model)
        if not found:
            raise ValueError(
                f"{type(model).__name__} has no piecewise-linear activation module (ReLU, LeakyReLU, ...). If it "
                "applies activations functionally (F.relu), pass `layers`: the modules whose outputs are the "
                "pre-activations (e.g. its Linear/Conv/BatchNorm modules)."
            )
        return [(name, module, _breakpoints(module)) for name, module in found]
    resolved = []
    modules = dict(model.named_modules())
    for layer in layers:
        if isinstance(layer, str):
            if layer not in modules:
                raise ValueError(f"`layers` names {layer!r}, which is not a submodule of {type(model).__name__}.")
            layer = modules[layer]
        if layer not in names:
            raise ValueError(f"A module in `layers` ({type(layer).__name__}) is not part of the model.")
        resolved.append((names[layer], layer, _breakpoints(layer)))
    return resolved


def _measurement_dtype(model: nn.Module) -> torch.dtype:
    parameter = next(iter(model.parameters()), None)
    if parameter is None or parameter.dtype == torch.float32:
        return torch.float32
    if parameter.dtype in (torch.float16, torch.bfloat16):
        warnings.warn(
            f"local_complexity: the model's parameters are {parameter.dtype}, so it is measured in that precision; "
            "at small radii sign changes may be lost. Measure a float32 copy for exact counts.",
            stacklevel=3,
        )
    return parameter.dtype


def local_complexity(
    model: nn.Module,
    points: torch.Tensor,
    radius: float,
    num_directions: int | None = None,
    directions: torch.Tensor | None = None,
    layers: Sequence[nn.Module | str] | None = None,
    generator: torch.Generator | None = None,
    *,
    include_center: bool = True,
    batch_size: int | None = None,
) -> LocalComplexity:
    """Per-point, per-layer local complexity of ``model`` at ``points`` for cross-polytopes of ``radius``.

    The model runs in eval mode, without gradients, in float32 (a float64 model in float64; a half-precision
    model in its own precision, with a warning) with
    autocast disabled; afterwards every submodule's training flag, the hooks and the global RNG are
    as they were, also when the model raises.

    Args:
        model: the network; ``model(vertices)`` must accept a batch shaped like ``points``.
        points: ``(N, *shape)`` centres, in the units the model sees (after normalization).
        radius: the cross-polytope's radius ``r`` in those units.
        num_directions: ``P``, the number of orthonormal directions to draw (``2P`` vertices).
        directions: ``(P, *shape)`` or ``(N, P, *shape)`` directions to use instead of drawing them.
        layers: modules (or their names) to count; by default the input of every ReLU-family
            activation module. A listed activation module is read at its input, any other module at
            its output (with breakpoint 0, as the official code reads Linear/BatchNorm outputs).
        generator: the private generator the directions are drawn from (seeded 0 when ``None``).
        include_center: also forward the point itself (a neuron counts when the centre differs too).
        batch_size: points per forward (all ``2P+1`` inputs of a point go together); by default as many
            as make about 8192 inputs.

    Returns:
        :class:`LocalComplexity` with ``counts`` ``(N, L)``.

    Example::

        >>> torch.manual_seed(0) is not None
        True
        >>> model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> lc = local_complexity(model, torch.randn(5, 2), radius=0.1, num_directions=2)
        >>> lc.counts.shape, lc.layer_names
        (torch.Size([5, 1]), ('1',))
    """
    check_number("local_complexity", "radius", radius, low=0)
    if points.dim() < 2 or points.shape[0] == 0:
        raise ValueError(f"points must be a non-empty batch (N, *shape); got shape {tuple(points.shape)}.")
    if directions is None:
        if num_directions is None:
            raise ValueError("Give num_directions (P, to draw P orthonormal directions) or explicit directions.")
        directions = orthonormal_directions(points.shape[1:], num_directions, generator)
    resolved = _resolve_layers(model, layers)
    dtype = _measurement_dtype(model)
    points = points.detach().to(dtype)
    directions = directions.detach().to(device=points.device, dtype=dtype)
    per_point_directions = directions.dim() == points.dim() + 1
    num_vertices = 2 * directions.shape[-points.dim()] + int(include_center)
    if batch_size is None:
        batch_size = max(1, 8192 // num_vertices)

    if not per_point_directions:
        zero = torch.zeros_like(points[:1])
        offsets = cross_polytope_vertices(zero, radius, directions, include_center)[0]
    counter = _RegionChangeCounter(num_vertices)
    vertex_buffer: torch.Tensor | None = None
    handles = []
    counts: list[torch.Tensor] = []
    finite: list[torch.Tensor] = []
    names: tuple[str, ...] = ()
    neurons: tuple[int, ...] = ()
    devices = [points.device] if points.device.type == "cuda" else []
    try:
        for name, module, breakpoints in resolved:
            hook = counter.pre_hook(name, breakpoints) if breakpoints else None
            if hook is not None:
                handles.append(module.register_forward_pre_hook(hook))
            else:
                handles.append(module.register_forward_hook(counter.output_hook(name)))
        with (
            eval_mode(model),
            torch.random.fork_rng(devices=devices),
            torch.no_grad(),
            torch.autocast(points.device.type, enabled=False),
        ):
            for start in range(0, points.shape[0], batch_size):
                chunk = points[start : start + batch_size]
                if per_point_directions:
                    frame = directions[start : start + batch_size]
                    vertices = cross_polytope_vertices(chunk, radius, frame, include_center)
                else:  # one broadcast add of the shared offsets into a reused buffer: a single pass, no page faults
                    if vertex_buffer is None:
                        vertex_buffer = torch.empty(chunk.shape[0], *offsets.shape, dtype=dtype, device=points.device)
                    vertices = torch.add(chunk.unsqueeze(1), offsets, out=vertex_buffer[: chunk.shape[0]])
                counter.calls.clear()
                counter._seen.clear()
                counter.finite = None
                model(vertices.reshape(-1, *points.shape[1:]))
                if not counter.calls:
                    raise ValueError("None of the layers was called by the forward pass; check `layers`.")
                if start == 0:
                    names = tuple(key for key, _, _ in counter.calls)
                    neurons = tuple(size for _, _, size in counter.calls)
                counts.append(torch.stack([count for _, count, _ in counter.calls], dim=1))
                finite.append(counter.finite)
    finally:
        for handle in handles:
            handle.remove()
    flags = torch.cat(finite)
    if not bool(flags.all()):
        warnings.warn(
            f"local_complexity: {int((~flags).sum())} of the {len(flags)} points met non-finite values (NaN or inf "
            "points, or a network with non-finite weights): their rows of `counts` are not counts (see `finite`; "
            "mean_total() is NaN).",
            stacklevel=2,
        )
    return LocalComplexity(torch.cat(counts).to(torch.long), names, neurons, flags)
