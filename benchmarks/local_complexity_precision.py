"""Does measuring LC in float32 instead of float64 change the count? Random MLPs, random inputs.

The official MNIST MLP script sets ``torch.set_default_dtype(torch.float64)``, so it trains and measures in
float64; :func:`~lightning_regs.functional.local_complexity.local_complexity` measures in the model's dtype
(float32 for a float32 model). Here the same network is measured twice, once as it is (float32) and
once as a float64 copy with the points and the directions cast to float64 (the same float32 directions,
upcast, so that both measurements use the same cross-polytopes up to rounding). Printed per network, layer
set (``library``: ReLU inputs with the centre; ``official_mlp``: every Linear output, logits included, no
centre) and radius: the per-point difference of the count summed over layers (float64 minus float32): its
largest absolute value, its mean, the share of points where it is not zero, and the relative change of the
mean LC. ``zeros`` counts pre-activations that are exactly 0.0 at some vertex in float32 (the official code
compares ``torch.sign``, three-valued, where the library compares ``> 0``: they can only disagree there).

Networks: the grokking MLP 64-200-200-10 with init scale 8 (:class:`~lightning_regs.models.MLP`) and a
16-32-32-10 MLP at PyTorch's default initialization, seeds 0-4; 1 000 Gaussian points per network,
P = 25 (64 inputs) or 8 (16 inputs) orthonormal directions, r = 0.005, 0.5, 2.0.

``--trained-steps N`` (default 12 000; 0 skips it) also trains the grokking MLP on 1 000 of scikit-learn's digits
(the rest held out; pixels /16, then the training images' mean and std; MSE on one-hot targets, AdamW lr 1e-3,
weight decay 0.3, batch 200 drawn with replacement, float32; close to ``benchmarks/grokking_lc_digits.py``) and
compares the two precisions on the training and held-out digits at the end.

``--frames`` adds the spread of the mean LC over five direction draws (same network and points), the size
of "another random frame" (the official code draws its frame with a different sampler).

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/local_complexity_precision.py [--frames] [--trained-steps N]
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from lightning_regs.functional.local_complexity import (
    cross_polytope_vertices,
    local_complexity,
    orthonormal_directions,
)
from lightning_regs.models import MLP

NETWORKS = {
    "64-200-200-10 x8": dict(in_features=64, width=200, depth=3, init_scale=8.0, num_directions=25),
    "16-32-32-10": dict(in_features=16, width=32, depth=3, init_scale=1.0, num_directions=8),
}
RADII = (0.005, 0.5, 2.0)
NUM_POINTS = 1000


def layer_sets(net: nn.Module) -> dict[str, tuple[list[str] | None, bool]]:
    linear = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    return {"library": (None, True), "official_mlp": (linear, False)}


def exact_zeros(net: nn.Module, layers: list[str] | None, vertices: torch.Tensor) -> int:
    """Pre-activations equal to 0.0 over all vertices (ReLU inputs, or Linear outputs when ``layers``)."""
    found = 0

    def count(values: torch.Tensor) -> None:
        nonlocal found
        found += int((values == 0).sum())

    handles = []
    for name, module in net.named_modules():
        if layers is None and isinstance(module, nn.ReLU):
            handles.append(module.register_forward_pre_hook(lambda m, args: count(args[0])))
        elif layers is not None and name in layers:
            handles.append(module.register_forward_hook(lambda m, args, out: count(out)))
    try:
        with torch.no_grad():
            net.eval()
            net(vertices.reshape(-1, *vertices.shape[2:]))
    finally:
        for handle in handles:
            handle.remove()
    return found


HEADER = (
    f"{'network':>18}{'layers':>14}{'r':>7}{'seed':>5}{'LC fp32':>10}{'LC fp64':>10}{'max|d|':>8}"
    f"{'mean d':>9}{'points d!=0':>13}{'rel. mean':>11}{'zeros':>7}"
)


def compare(label: str, seed: int | str, net: nn.Module, points: torch.Tensor, directions: torch.Tensor) -> None:
    """One row per layer set and radius: float32 against a float64 copy on the same points and directions."""
    net64 = copy.deepcopy(net).double()
    for layer_label, (layers, centre) in layer_sets(net).items():
        for radius in RADII:
            lc32 = local_complexity(
                net, points, radius, directions=directions, layers=layers, include_center=centre
            ).total()
            lc64 = local_complexity(
                net64, points.double(), radius, directions=directions.double(), layers=layers, include_center=centre
            ).total()
            d = lc64 - lc32
            m32, m64 = lc32.double().mean().item(), lc64.double().mean().item()
            zeros = exact_zeros(net, layers, cross_polytope_vertices(points, radius, directions, centre))
            print(
                f"{label:>18}{layer_label:>14}{radius:>7g}{seed!s:>5}{m32:>10.3f}{m64:>10.3f}"
                f"{int(d.abs().max()):>8}{d.double().mean().item():>9.4f}"
                f"{(d != 0).double().mean().item():>13.2%}{(m64 - m32) / m32:>11.3%}{zeros:>7}"
            )


def network_and_points(spec: dict, seed: int) -> tuple[MLP, torch.Tensor]:
    """The random MLP of ``spec`` (initialized from ``seed``) and ``NUM_POINTS`` Gaussian points."""
    torch.manual_seed(seed)
    net = MLP(
        in_features=spec["in_features"], num_classes=10, width=spec["width"], depth=spec["depth"],
        init_scale=spec["init_scale"],
    )  # fmt: skip
    return net, torch.randn(NUM_POINTS, spec["in_features"], generator=torch.Generator().manual_seed(seed))


def precision(seeds: range) -> None:
    print(HEADER)
    for label, spec in NETWORKS.items():
        num_directions = spec["num_directions"]
        for seed in seeds:
            net, points = network_and_points(spec, seed)
            generator = torch.Generator().manual_seed(seed)
            compare(label, seed, net, points, orthonormal_directions((spec["in_features"],), num_directions, generator))


def trained(steps: int, seed: int = 0) -> None:
    from sklearn.datasets import load_digits

    print(f"\ngrokking MLP trained {steps} steps on 1 000 digits (float32), measured on digits:")
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).reshape(-1, 64) / 16.0
    labels = torch.as_tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    train, heldout = order[:1000], order[1000:]
    mean, std = images[train].mean(), images[train].std()
    images = (images - mean) / std
    torch.manual_seed(seed)
    net = MLP(in_features=64, num_classes=10, width=200, depth=3, init_scale=8.0)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.3)
    targets = nn.functional.one_hot(labels, 10).float()
    batches = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        batch = train[torch.randint(len(train), (200,), generator=batches)]
        loss = nn.functional.mse_loss(net(images[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        net.eval()
        accuracy = {name: (net(images[idx]).argmax(1) == labels[idx]).float().mean().item()
                    for name, idx in (("train", train), ("heldout", heldout))}  # fmt: skip
    print(f"(train accuracy {accuracy['train']:.3f}, held-out accuracy {accuracy['heldout']:.3f})")
    print(HEADER)
    directions = orthonormal_directions((64,), 25, torch.Generator().manual_seed(seed))
    for name, idx in (("train", train), ("heldout", heldout)):
        compare(f"trained, {name}", seed, net, images[idx], directions)


def frames(seeds: range) -> None:
    print("\nmean LC (default layers) over 5 direction draws, same network and points:")
    print(f"{'network':>18}{'r':>7}{'seed':>5}{'min':>9}{'max':>9}{'(max-min)/min':>15}")
    for label, spec in NETWORKS.items():
        for seed in seeds:
            net, points = network_and_points(spec, seed)
            for radius in RADII[1:]:
                means = []
                for frame in range(5):
                    generator = torch.Generator().manual_seed(1000 + frame)
                    directions = orthonormal_directions((spec["in_features"],), spec["num_directions"], generator)
                    means.append(local_complexity(net, points, radius, directions=directions).total().double().mean())
                low, high = min(means).item(), max(means).item()
                print(f"{label:>18}{radius:>7g}{seed:>5}{low:>9.3f}{high:>9.3f}{(high - low) / low:>15.2%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--frames", action="store_true", help="also the spread over five direction draws")
    parser.add_argument("--trained-steps", type=int, default=12_000, help="0 skips the trained network")
    args = parser.parse_args()
    precision(range(args.seeds))
    if args.trained_steps:
        trained(args.trained_steps)
    if args.frames:
        frames(range(args.seeds))


if __name__ == "__main__":
    main()
