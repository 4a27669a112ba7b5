"""One local-complexity measurement against the forward passes it cannot avoid, timed in the same run.

    python benchmarks/local_complexity_cost.py               # MLPs and PreAct ResNet-18 width 16
    python benchmarks/local_complexity_cost.py --only mlp    # the grokking MLPs only
    python benchmarks/local_complexity_cost.py --only resnet64 --repeats 1   # width 64 (slow on CPU)

For each setting, ``local_complexity`` (hooks, vertex construction, per-call reduction, chunking) is
timed against plain ``model(vertices)`` forwards of the same (2P+1)·N inputs in the same chunks (eval
mode, no_grad, fp32, CPU), interleaved ``--repeats`` times; the ratio of the best times and the median
of the paired ratios are printed. The issue's anchor (the official code, measured the same way):
1.74x on the MLP 64-200-200-200-10 (N=1024, P=25), 1.32x on a small BN CNN at 32x32 (N=128, P=20); goal <= 1.15x.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightning_regs.functional.local_complexity import cross_polytope_vertices, local_complexity, orthonormal_directions
from lightning_regs.models import MLP, PreActResNet18


def settings(only: str | None):
    table = [
        (
            "mlp",
            "grokking MLP 64-200-200-10 (digits)",
            lambda: MLP(64, 10, 200, depth=3, init_scale=8.0),
            (1, 8, 8),
            1024,
            25,
            0.5,
        ),
        ("mlp", "MLP 64-200-200-200-10 (anchor)", lambda: MLP(64, 10, 200, depth=4), (1, 8, 8), 1024, 25, 0.5),
        (
            "resnet",
            "PreAct ResNet-18 w16 no-BN 32x32",
            lambda: PreActResNet18(10, 3, 16, use_batchnorm=False),
            (3, 32, 32),
            128,
            20,
            0.005,
        ),
        (
            "resnet64",
            "PreAct ResNet-18 w64 BN 32x32",
            lambda: PreActResNet18(10, 3, 64, use_batchnorm=True),
            (3, 32, 32),
            128,
            20,
            0.005,
        ),
    ]
    # width 64 costs ~16x width 16 (minutes per pass on 2 CPU cores): only when asked for
    return [row for row in table if row[0] == only or (only is None and row[0] != "resnet64")]


def time_once(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["mlp", "resnet", "resnet64"], default=None)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch-points", type=int, default=None, help="points per forward (default: ~8192 inputs)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, fp32 CPU")
    for _, label, build, shape, num_points, num_directions, radius in settings(args.only):
        model = build().eval()
        points = torch.randn(num_points, *shape)
        directions = orthonormal_directions(shape, num_directions, torch.Generator().manual_seed(0))
        per_chunk = args.batch_points or max(1, 8192 // (2 * num_directions + 1))
        chunks = [
            cross_polytope_vertices(points[i : i + per_chunk], radius, directions, include_center=True).flatten(0, 1)
            for i in range(0, num_points, per_chunk)
        ]

        def floor(model=model, chunks=chunks) -> None:
            with torch.no_grad():
                for chunk in chunks:
                    model(chunk)

        def measure(model=model, points=points, radius=radius, directions=directions, per_chunk=per_chunk) -> None:
            local_complexity(model, points, radius, directions=directions, batch_size=per_chunk)

        floor()
        measure()  # warm-up
        floors, measures = [], []
        for _ in range(args.repeats):
            floors.append(time_once(floor))
            measures.append(time_once(measure))
        ratio = statistics.median(m / f for m, f in zip(measures, floors, strict=True))
        best = min(measures) / min(floors)  # the least disturbed pair of timings on a shared machine
        inputs = num_points * (2 * num_directions + 1)
        print(
            f"{label}: N={num_points} P={num_directions} ({inputs} inputs, {per_chunk} points/forward) "
            f"floor {min(floors):.3f} s, measurement {min(measures):.3f} s (best of {args.repeats}); "
            f"ratio {best:.3f}x (best/best), {ratio:.3f}x (median of paired ratios)"
        )


if __name__ == "__main__":
    main()
