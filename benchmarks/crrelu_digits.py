"""CRReLU against ReLU in a small MLP on the digits data, over seeds: test accuracy, ECE, NLL and the learned ε.

    python benchmarks/crrelu_digits.py                  # 5 seeds, 20 epochs (the crrelu_digits.yaml recipe)
    python benchmarks/crrelu_digits.py --seeds 0 1      # fewer seeds
    python benchmarks/crrelu_digits.py --cost           # the activation alone: saved bytes and time, vs ReLU

The recipe is ``examples/crrelu_digits.yaml``: ``MLP(in_features=64, width=128, depth=3)`` (two hidden layers,
so two CRReLU modules and two ε), SGD lr 0.05 with Nesterov momentum 0.9, weight decay 5e-4 (on ε too),
cosine schedule with one warm-up epoch, batch 64. Each seed sets the initialization, the data split and the
order; the two runs of one seed start from the same Linear weights (building a CRReLU draws no random
number) and differ only by the activation. Metrics on the held-out test split (270 digits) after the last
epoch; ECE with 15 bins. One torch thread (``--threads``): a width-128 MLP gains nothing from a second one,
and on 2 cores shared with other jobs two threads oversubscribe.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
from _timing import fit_and_test, summary
from lightning.pytorch import seed_everything
from torch import nn

from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.local_learning.saved_bytes import SavedTensorMeter
from lightning_regs.models import MLP, CRReLU
from lightning_regs.tasks import ImageClassifier

ACTIVATIONS = ("relu", "crrelu")


def run(seed: int, activation: str, epochs: int) -> dict[str, float]:
    seed_everything(seed, verbose=False)
    backbone = MLP(in_features=64, num_classes=10, width=128, depth=3, activation=activation)
    task = ImageClassifier(backbone, 10, lr=0.05, weight_decay=5e-4, scheduler="cosine", warmup_epochs=1)
    metrics, seconds = fit_and_test(task, DigitsDataModule(batch_size=64, seed=seed), epochs)
    eps = [m.eps.item() for m in backbone.modules() if isinstance(m, CRReLU)]
    return {
        "acc": metrics["test/acc"],
        "ece": metrics["test/ece"],
        "nll": metrics["test/loss"],
        "seconds": seconds,
        "eps": eps,
    }


def cost(shape: tuple[int, int] = (256, 4096), repeats: int = 50) -> None:
    """Bytes autograd saves per input element, and the median forward+backward time, of each activation alone.

    The activations take turns within each repeat, so a load that comes and goes slows all of them alike.
    """
    x = torch.randn(*shape)
    activations = {"relu": nn.ReLU(), "crrelu": CRReLU(), "crrelu fixed eps": CRReLU(learnable=False)}
    saved: dict[str, int] = {}
    for name, act in activations.items():
        meter = SavedTensorMeter(exclude=[act])
        with meter:
            act(x.clone().requires_grad_()).sum().backward()
        saved[name] = meter.peak_bytes
    samples: dict[str, list[float]] = {name: [] for name in activations}
    for _ in range(repeats):
        for name, act in activations.items():
            leaf = x.clone().requires_grad_()
            start = time.perf_counter()
            act(leaf).sum().backward()
            samples[name].append(time.perf_counter() - start)
    relu = statistics.median(samples["relu"])
    for name in activations:
        median = statistics.median(samples[name])
        print(
            f"  {name:17s} saved {saved[name] / x.numel():.0f} bytes per element (float32); "
            f"forward+backward {median * 1e3:.2f} ms, {median / relu:.2f}x ReLU",
            flush=True,
        )


def main() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cost", action="store_true", help="measure the activation alone and stop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.cost:
        print(f"one activation on a (256, 4096) float32 input, {args.threads} thread(s), median of 50:")
        cost()
        return
    results: dict[str, list[dict]] = {name: [] for name in ACTIVATIONS}
    for seed in args.seeds:
        for name in ACTIVATIONS:
            result = run(seed, name, args.epochs)
            results[name].append(result)
            eps = " ".join(f"{e:+.4f}" for e in result["eps"])
            print(
                f"seed {seed} {name:7s} test acc {result['acc']:.4f} ece {result['ece']:.4f} "
                f"nll {result['nll']:.4f} fit {result['seconds']:.1f} s" + (f"  final eps {eps}" if eps else ""),
                flush=True,
            )
    print(f"\n{len(args.seeds)} seeds, {args.epochs} epochs, mean ± std (acc and ECE in %, ECE 15 bins):")
    for name, runs in results.items():
        print(
            f"  {name:7s} acc {summary([r['acc'] for r in runs])}  ece {summary([r['ece'] for r in runs])}  "
            f"nll {summary([r['nll'] for r in runs], 1.0)}  fit {statistics.mean(r['seconds'] for r in runs):.1f} s"
        )
    relu, cr = results["relu"], results["crrelu"]
    gaps = [c["acc"] - r["acc"] for r, c in zip(relu, cr, strict=True)]
    all_eps = [e for r in cr for e in r["eps"]]
    print(f"  crrelu − relu, paired by seed: acc {summary(gaps)} points; fit time ratio "
          f"{statistics.mean(c['seconds'] for c in cr) / statistics.mean(r['seconds'] for r in relu):.2f}")  # fmt: skip
    print(f"  final eps over {len(all_eps)} modules: min {min(all_eps):+.4f} mean {statistics.mean(all_eps):+.4f} "
          f"max {max(all_eps):+.4f} (start +0.0100)")  # fmt: skip


if __name__ == "__main__":
    main()
