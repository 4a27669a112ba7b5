"""AEM's λ on the digits-bags toy, over seeds: test bag AUROC, attention entropy H / log N, instance localisation.

    python benchmarks/aem_digits_bags.py                        # λ ∈ {0, 0.1, 0.3}, 5 seeds, 10 epochs
    python benchmarks/aem_digits_bags.py --weights 0 0.1 --seeds 0 1

The recipe is ``examples/aem_digits_bags.yaml``: gated ABMIL (embedding 128, attention 128) on bags of about 10
scikit-learn digits (positive iff a 9 is in the bag; 200 training, 100 test bags), one bag per step, AdamW lr 5e-4,
weight decay 1e-5, cosine to 0, 10 epochs; λ = 0 is plain ABMIL. Each seed sets the initialization, the digits'
split, the bags and the order; the runs of one seed differ only by λ. Metrics on the test bags after the last
epoch: bag AUROC, bag accuracy, the mean normalised attention entropy (1: uniform, 0: all on one instance), and
the instance AUROC of the attention scores within positive bags (how well the attention finds the 9s).
"""

from __future__ import annotations

import argparse
import logging
import statistics

import torch
from _timing import fit_and_test, summary
from lightning.pytorch import seed_everything

from lightning_regs.datamodules import DigitsBagsDataModule
from lightning_regs.models import AttentionMIL
from lightning_regs.tasks import AttentionEntropyTerm, MILClassifier

METRICS = {"auroc": "test/auroc", "acc": "test/acc", "entropy": "test/attention_entropy", "loc": "test/instance_auroc"}


def run(seed: int, weight: float, epochs: int) -> dict[str, float]:
    seed_everything(seed, verbose=False)
    model = AttentionMIL(in_features=64, num_classes=2, embed_dim=128, attention_dim=128, gated=True)
    terms = [AttentionEntropyTerm(weight=weight)] if weight else []
    task = MILClassifier(model, lr=5e-4, weight_decay=1e-5, scheduler="cosine", loss_terms=terms)
    metrics, seconds = fit_and_test(task, DigitsBagsDataModule(batch_size=1, seed=seed), epochs)
    return {**{name: metrics[key] for name, key in METRICS.items()}, "seconds": seconds}


def main() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[float, list[dict[str, float]]] = {weight: [] for weight in args.weights}
    for seed in args.seeds:
        for weight in args.weights:
            result = run(seed, weight, args.epochs)
            results[weight].append(result)
            print(
                f"seed {seed} λ={weight:<4} test auroc {result['auroc']:.4f} acc {result['acc']:.4f} "
                f"entropy {result['entropy']:.4f} localisation {result['loc']:.4f} fit {result['seconds']:.1f} s",
                flush=True,
            )
    print(f"\n{len(args.seeds)} seeds, {args.epochs} epochs, mean ± std (in %):")
    print("| λ | bag AUROC | bag acc | H / log N | instance AUROC (localisation) |")
    print("|---|---|---|---|---|")
    for weight, runs in results.items():
        cells = " | ".join(summary([r[name] for r in runs]) for name in METRICS)
        print(f"| {weight:g} | {cells} |")
    base = results.get(0.0)
    for weight, runs in results.items():
        if base is None or weight == 0.0:
            continue
        higher = sum(r["entropy"] > b["entropy"] for r, b in zip(runs, base, strict=True))
        gaps = [r["auroc"] - b["auroc"] for r, b in zip(runs, base, strict=True)]
        print(
            f"λ={weight:g} − λ=0, paired by seed: entropy higher in {higher}/{len(runs)} seeds; bag AUROC "
            f"{summary(gaps)} points; fit time ratio "
            f"{statistics.mean(r['seconds'] for r in runs) / statistics.mean(b['seconds'] for b in base):.2f}"
        )


if __name__ == "__main__":
    main()
