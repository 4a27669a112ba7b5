"""GCD on the digits: SimGCD-style baseline vs + LER vs + DKL vs LegoGCD over seeds, All/Old/New (v2).

    python benchmarks/gcd_digits.py                      # 3 seeds, 30 epochs (the gcd_digits.yaml recipe)
    python benchmarks/gcd_digits.py --seeds 0 1 2 3 4 --epochs 50

Known digits 0-4 (half of their training images labelled), novel digits 5-9; a SmallCNN from scratch.
Each seed sets the initialization, the split, the labelled subset and the order; the runs of one seed
differ only by the LegoGCD switches. Accuracy on the unlabelled training images (transductive, the
papers' protocol) and on the held-out test images, after the last epoch, one Hungarian matching (v2).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
from _timing import summary
from lightning.pytorch import Trainer, seed_everything

from lightning_regs.datamodules.digits_gcd import DigitsGCDDataModule
from lightning_regs.models import SmallCNN
from lightning_regs.tasks import GCDClassifier

METHODS = {
    "simgcd": {"ler_weight": 0.0, "dkl_weight": 0.0},
    "+ler": {"ler_weight": 2.0, "dkl_weight": 0.0},
    "+dkl": {"ler_weight": 0.0, "dkl_weight": 1.0},
    "legogcd": {"ler_weight": 2.0, "dkl_weight": 1.0},
}


def run(seed: int, method: str, epochs: int, ler_threshold: float = 0.7) -> dict[str, float]:
    seed_everything(seed, verbose=False)
    task = GCDClassifier(
        SmallCNN(num_classes=64, width=32), feature_dim=64, num_known=5, num_novel=5,
        proj_hidden=256, proj_dim=64, lr=0.05, memax_weight=2.0, teacher_warmup_epochs=max(epochs // 3, 1),
        ler_threshold=ler_threshold, **METHODS[method],
    )  # fmt: skip
    data = DigitsGCDDataModule(batch_size=128, seed=seed)
    trainer = Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, check_val_every_n_epoch=epochs,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(task, data)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("gcd/")}
    trainer.test(task, data, verbose=False)
    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("gcd/test_")})
    metrics["seconds"] = time.perf_counter() - start
    metrics["ler_novel_share"] = ler_novel_share(task, data, ler_threshold)
    return metrics


def ler_novel_share(task: GCDClassifier, data: DigitsGCDDataModule, threshold: float) -> float:
    """Share of novel-class images among the unlabelled training images LER would select after training."""
    rows = data.train_set
    task.eval()
    with torch.no_grad():
        logits = task(rows.images)
    confidence, predicted = (logits / 0.1).softmax(dim=1).max(dim=1)
    selected = ~rows.labeled & (confidence >= threshold) & torch.isin(predicted, torch.tensor(task.known_classes))
    novel = ~torch.isin(rows.truth, torch.tensor(task.known_classes))
    return float(novel[selected].float().mean()) if bool(selected.any()) else float("nan")


def main() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(1)  # small convolutions: more threads only contend
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--ler-threshold", type=float, default=0.7, help="δ (CUB's 0.7; CIFAR-10's 0.95)")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in args.methods}
    for seed in args.seeds:
        for name in args.methods:
            results[name].append(run(seed, name, args.epochs, args.ler_threshold))
    print(f"digits GCD, {len(args.seeds)} seeds, {args.epochs} epochs, δ={args.ler_threshold}; accuracy %, v2")
    print("| method | All | Old | New | test All | test Old | test New | novel share of LER rows | s/run |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        cells = [summary([r[f"gcd/{g}"] for r in runs], digits=1) for g in ("all", "old", "new")]
        cells += [summary([r[f"gcd/test_{g}"] for r in runs], digits=1) for g in ("all", "old", "new")]
        cells.append(summary([r["ler_novel_share"] for r in runs], digits=1))
        seconds = statistics.mean(r["seconds"] for r in runs)
        print(f"| {name} | " + " | ".join(cells) + f" | {seconds:.0f} |")


if __name__ == "__main__":
    main()
