"""What the monitors cost at their defaults: fit time with each monitor against the same fit without, one run.

    python benchmarks/monitor_overhead.py                          # SmallCNN on digits, 1,000 steps
    python benchmarks/monitor_overhead.py --model resnet18 --steps 1000 --batch 64

The model trains on digits (3×32×32 for torchvision's resnet18, 1×8×8 for SmallCNN). For each
monitor at its defaults (``LocalComplexityMonitor()``, ``AdversarialRobustnessMonitor()``) the script
prints the measurements taken and skipped, the monitor's own overhead (seconds measuring ÷ seconds
training, what it logs as ``<prefix>/overhead``) and the fit-time ratio against the baseline fit of
the same run (baseline first, then each monitor; seeds and data identical).
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_regs.callbacks import AdversarialRobustnessMonitor, LocalComplexityMonitor, ScheduledMonitor
from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.models import SmallCNN
from lightning_regs.tasks import ImageClassifier


def build(model: str, batch: int) -> tuple[ImageClassifier, DigitsDataModule]:
    if model == "resnet18":
        from torchvision.models import resnet18

        data = DigitsDataModule(batch_size=batch, image_size=32, channels=3)
        return ImageClassifier(resnet18(num_classes=10), 10, lr=0.05), data
    return ImageClassifier(SmallCNN(num_classes=10), 10, lr=0.05), DigitsDataModule(batch_size=batch)


def fit(model: str, steps: int, batch: int, monitor: ScheduledMonitor | None) -> float:
    seed_everything(0, verbose=False)
    task, data = build(model, batch)
    trainer = Trainer(
        max_steps=steps, limit_val_batches=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[monitor] if monitor else [],
    )  # fmt: skip
    started = time.perf_counter()
    trainer.fit(task, data)
    return time.perf_counter() - started


def main() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smallcnn", "resnet18"], default="smallcnn")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    baseline = fit(args.model, args.steps, args.batch, None)
    print(f"{args.model}, {args.steps} steps, batch {args.batch}: baseline fit {baseline:.1f} s", flush=True)
    for monitor in (LocalComplexityMonitor(plot=False), AdversarialRobustnessMonitor(plot=False)):
        seconds = fit(args.model, args.steps, args.batch, monitor)
        training = seconds - monitor.measure_seconds
        print(
            f"  {type(monitor).__name__:30s} points/set {monitor.points_per_set}, {len(monitor.measured_steps)} "
            f"measured, {len(monitor.skipped_steps)} skipped; own overhead {monitor.measure_seconds / training:.1%}; "
            f"fit {seconds:.1f} s = {seconds / baseline:.3f}x baseline",
            flush=True,
        )


if __name__ == "__main__":
    main()
