"""Run the grokking reproduction of ``examples/grokking_digits.yaml`` and draw its figures.

    python examples/grokking_digits.py                      # 1e5 steps, as the recipe
    python examples/grokking_digits.py --max-steps 20000    # shorter
    python examples/grokking_digits.py --figures docs/methods/figures

Trains through the LightningCLI with the YAML (so the config is what runs), then reads the monitors'
histories and the CSV log, prints the cost (training time, time inside the monitors) and the curves'
landmarks, and writes ``grokking_digits.png`` (accuracies and LC against the step, log axis).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch

from lightning_regs.callbacks.local_complexity_monitor import LocalComplexityMonitor
from lightning_regs.callbacks.robustness_monitor import AdversarialRobustnessMonitor
from lightning_regs.cli import LightningRegsCLI

CONFIG = Path(__file__).with_name("grokking_digits.yaml")


def read_metric(metrics_csv: Path, name: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    with metrics_csv.open() as handle:
        for row in csv.DictReader(handle):
            if row.get(name):
                steps.append(int(row["step"]))
                values.append(float(row[name]))
    return steps, values


def first_step(steps: list[int], values: list[float], threshold: float) -> int | None:
    return next((s for s, v in zip(steps, values, strict=True) if v >= threshold), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--root", default="runs/grokking_digits")
    parser.add_argument("--figures", default="docs/methods/figures")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: tiny ops, busy shared cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    cli = LightningRegsCLI(
        args=[
            "fit",
            f"--config={CONFIG}",
            f"--trainer.max_steps={args.max_steps}",
            f"--trainer.default_root_dir={args.root}",
            f"--trainer.logger.init_args.save_dir={args.root}",
        ]
    )
    wall = time.perf_counter() - started
    trainer = cli.trainer
    lc = next(c for c in trainer.callbacks if isinstance(c, LocalComplexityMonitor))
    robust = next(c for c in trainer.callbacks if isinstance(c, AdversarialRobustnessMonitor))
    metrics_csv = Path(trainer.logger.log_dir) / "metrics.csv"
    train_steps, train_acc = read_metric(metrics_csv, "train/acc")
    _, val_acc = read_metric(metrics_csv, "val/acc")

    steps = lc.measured_steps
    peak = max(range(len(steps)), key=lambda i: lc.history["lc/train"][i])
    summary = {
        "steps": trainer.global_step,
        "wall_s": round(wall, 1),
        "s_per_step": round(wall / max(trainer.global_step, 1), 5),
        "lc_monitor_s": round(lc.measure_seconds, 1),
        "robust_monitor_s": round(robust.measure_seconds, 1),
        "monitor_share": round((lc.measure_seconds + robust.measure_seconds) / wall, 4),
        "train_acc_100_at": first_step(train_steps, train_acc, 0.999),
        "final_train_acc": train_acc[-1] if train_acc else None,
        "final_val_acc": val_acc[-1] if val_acc else None,
        "heldout_clean_acc": dict(zip(robust.measured_steps, robust.history["robust/clean_acc"], strict=True)),
        "robust_acc": dict(zip(robust.measured_steps, robust.history["robust/acc"], strict=True)),
        "lc_train_peak": (steps[peak], lc.history["lc/train"][peak]),
        "lc": {
            name: dict(zip(steps, lc.history[name], strict=True)) for name in ("lc/train", "lc/heldout", "lc/random")
        },
    }
    print(json.dumps(summary, indent=1))

    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 3.6), dpi=90)
    left, right = figure.subplots(1, 2)
    left.plot([s + 1 for s in train_steps], train_acc, label="train acc", lw=1)
    left.plot([s + 1 for s in robust.measured_steps], robust.history["robust/clean_acc"], ".-", label="held-out acc")
    left.plot([s + 1 for s in robust.measured_steps], robust.history["robust/acc"], ".-", label="PGD-linf acc")
    left.set_ylabel("accuracy")
    for name in ("lc/train", "lc/heldout", "lc/random"):
        right.plot([s + 1 for s in steps], lc.history[name], ".-", label=name)
    right.set_ylabel(f"LC, r={lc.radii[0]:g} (neurons)")
    for axes in (left, right):
        axes.set_xscale("log")
        axes.set_xlabel("optimizer step + 1")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle(f"Digits, MLP 64-200-200-10, init x8, MSE, AdamW ({trainer.global_step} steps)")
    figure.tight_layout()
    out = Path(args.figures)
    out.mkdir(parents=True, exist_ok=True)
    figure.savefig(out / "grokking_digits.png")
    (Path(args.root) / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"figure: {out / 'grokking_digits.png'}")


if __name__ == "__main__":
    main()
