"""Wall time of one local-learning training step against end-to-end training, in the same run.

    python benchmarks/local_learning_step_time.py                      # ResNet-110, batch 128, InfoPro* K = 2, 4
    python benchmarks/local_learning_step_time.py --extra              # also DGL (auto split) and MAN rows
    python benchmarks/local_learning_step_time.py --depth 32 --batch 64 --auglocal-d 2
    python benchmarks/local_learning_step_time.py --device cuda --extra   # on a GPU: also torch.cuda peak memory

One step = zero_grad, forward, backward(s), SGD step: end-to-end (one backward) against the local loop
of :class:`~lightning_regs.tasks.LocalLearningClassifier` (one backward per module, each module's graph
freed at once). The configurations are timed round-robin, one step each per round, so that a change in
machine load hits them all alike; the figure is the median over rounds of each round's ratio to that
round's end-to-end step (and the medians' ratio beside it). The first ``--warmup`` rounds are dropped.
Random data, 10 classes; the default rows are the InfoPro* splits with the InfoPro head, the setting
of the anchor measured on the official code (CPU: K=2 0.68x, K=4 0.78x).

With ``--device cuda`` every step is bracketed by ``torch.cuda.synchronize()``, and after the timed rounds
one more step per configuration measures ``torch.cuda.max_memory_allocated()`` above the memory allocated
before that step (activations and temporaries; weights, gradients and optimizer state are resident by then),
as a ratio to end-to-end.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch

from lightning_regs.functional.classification import classification_loss
from lightning_regs.models import CifarResNet
from lightning_regs.tasks.local_learning_classifier import LocalLearningClassifier

Step = Callable[[], None]


def sgd_step(module: torch.nn.Module, backward: Callable[[], None]) -> Step:
    """One optimizer step over ``module``'s parameters: zero_grad, ``backward()`` (forward included), SGD step."""
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        backward()
        optimizer.step()

    return step


def configurations(args: argparse.Namespace, shape: tuple[int, ...]) -> dict[str, Step]:
    torch.manual_seed(0)
    device = torch.device(args.device)
    x, y = torch.randn(args.batch, *shape, device=device), torch.randint(0, 10, (args.batch,), device=device)
    model = CifarResNet(depth=args.depth).to(device)
    steps: dict[str, Step] = {"end-to-end": sgd_step(model, lambda: classification_loss(model(x), y).backward())}
    rows: list[tuple[str, dict]] = []
    for K in args.K:
        split = "infopro_star" if args.depth == 110 and K in (2, 3, 4) else "auto"
        rows.append((f"InfoPro {split} K={K}", {"K": K, "split": split, "head": "infopro"}))
        if args.extra:
            rows.append((f"DGL auto K={K}", {"K": K, "split": "auto", "head": "dgl"}))
            rows.append((f"InfoPro+MAN {split} K={K}", {"K": K, "split": split, "head": "infopro", "man": True}))
    for d in args.auglocal_d:
        rows.append((f"AugLocal d={d}", {"head": "auglocal", "d": d}))
    for name, kwargs in rows:
        task = LocalLearningClassifier(CifarResNet(depth=args.depth), 10, input_shape=shape, **kwargs).to(device)
        steps[name] = sgd_step(task, functools.partial(task.local_backward, x, y, backward=torch.Tensor.backward))
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=110)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--K", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--extra", action="store_true", help="add DGL (auto split) and InfoPro+MAN rows")
    parser.add_argument("--auglocal-d", type=int, nargs="*", default=[], help="add AugLocal rows for these d")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    shape = (3, 32, 32)
    steps = configurations(args, shape)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(args.warmup + args.rounds):
        for name, step in steps.items():
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize()
            if round_index >= args.warmup:
                times[name].append(time.perf_counter() - start)
    base = times["end-to-end"]
    where = torch.cuda.get_device_name() if cuda else f"{torch.get_num_threads()} CPU threads"
    print(f"ResNet-{args.depth}, batch {args.batch}, {shape}, {where}, {args.rounds} rounds (+{args.warmup} warm-up)")
    print(f"{'configuration':<28}{'median s':>10}{'paired ratio':>14}{'median ratio':>14}")
    for name, values in times.items():
        paired = statistics.median(v / b for v, b in zip(values, base, strict=True))
        ratio = statistics.median(values) / statistics.median(base)
        print(f"{name:<28}{statistics.median(values):>10.3f}{paired:>13.3f}x{ratio:>13.3f}x")
    if cuda:
        print_cuda_peaks(steps)


def print_cuda_peaks(steps: dict[str, Step]) -> None:
    peaks = {}
    for name, step in steps.items():
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() - before
    print(f"\n{'configuration':<28}{'step peak MiB':>14}{'vs E2E':>9}   (max_memory_allocated above resident)")
    for name, peak in peaks.items():
        print(f"{name:<28}{peak / 2**20:>14.1f}{peak / peaks['end-to-end']:>8.3f}x")


if __name__ == "__main__":
    main()
