"""Step time of MixUp, CutMix and MixUp + PS-KD (PS-KD's extra forward on the unmixed images) against no callback.

    python benchmarks/mixup_overhead.py            # SmallCNN and PreAct ResNet-18 on random 3×32×32, batch 128
    python benchmarks/mixup_overhead.py --quick    # fewer steps and repeats, SmallCNN only

Two measurements, from the second epoch on (when PS-KD reads its table):

* A/B: runs with each setting interleaved in one process (baseline, MixUp, CutMix, PS-KD, MixUp + PS-KD, then
  again); each ratio is median(step with) / median(step without) over all repeats. Sensitive to machine load.
* in-run, for PS-KD alone and beside MixUp: the time spent in PS-KD's own hooks (under MixUp they hold the clean
  forward that keeps mixed predictions out of the table, ``ProgressiveSelfKD(rewritten_inputs="clean_forward")``)
  against the rest of the same step; 1 + median(hook time / rest of step). Robust to load.
"""

from __future__ import annotations

import argparse
import logging
import statistics
from collections.abc import Callable

import torch
from _timing import QUIET, StepTimer
from lightning.pytorch import Callback, Trainer, seed_everything
from pskd_overhead import RandomImages, TimedProgressiveSelfKD

from lightning_regs.callbacks import CutMix, MixUp
from lightning_regs.models import PreActResNet18, SmallCNN
from lightning_regs.tasks import ImageClassifier

SETTINGS: dict[str, Callable[[], list[Callback]]] = {
    "baseline": list,
    "mixup": lambda: [MixUp(alpha=1.0)],
    "cutmix": lambda: [CutMix(alpha=1.0)],
    "pskd": lambda: [TimedProgressiveSelfKD(alpha_T=0.8)],
    "mixup+pskd": lambda: [MixUp(alpha=1.0), TimedProgressiveSelfKD(alpha_T=0.8)],
}


def time_run(make_task, setting: str, steps: int, accelerator: str) -> tuple[list[float], list[float]]:
    """Step periods, and (with PS-KD) its hooks' share of the rest of each step."""
    seed_everything(0, verbose=False)
    timer = StepTimer(from_epoch=1)
    callbacks = SETTINGS[setting]()
    trainer = Trainer(
        max_epochs=2, limit_train_batches=steps, limit_val_batches=0, accelerator=accelerator, devices=1,
        callbacks=[timer, *callbacks], **QUIET,
    )  # fmt: skip
    trainer.fit(make_task(), RandomImages(steps * 128, 10, 128))
    timed = [c for c in callbacks if isinstance(c, TimedProgressiveSelfKD)]
    # The timer sees step k's period at the start of step k+1: pair hook times with the following period.
    hooks = timed[0].hook_seconds[: len(timer.periods)] if timed else []
    return timer.periods, [hook / (period - hook) for hook, period in zip(hooks, timer.periods, strict=False)]


def measure(name: str, make_task, steps: int, repeats: int, accelerator: str) -> None:
    periods: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
    shares: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
    for _ in range(repeats):
        for setting in SETTINGS:
            run_periods, run_shares = time_run(make_task, setting, steps, accelerator)
            periods[setting] += run_periods
            shares[setting] += run_shares
    median = {setting: statistics.median(values) for setting, values in periods.items()}
    ratios = ", ".join(f"{s} {median[s] / median['baseline']:.3f}×" for s in SETTINGS if s != "baseline")
    clean = median["mixup+pskd"] / median["pskd"]
    in_run = {s: 1 + statistics.median(shares[s]) for s in ("pskd", "mixup+pskd")}
    print(
        f"{name}: baseline step {median['baseline'] * 1e3:.1f} ms; A/B {ratios}; MixUp+PS-KD / PS-KD {clean:.3f}×; "
        f"in-run PS-KD hooks {in_run['pskd']:.3f}× alone, {in_run['mixup+pskd']:.3f}× beside MixUp (with the clean "
        f"forward); {len(periods['baseline'])} timed steps each"
    )


def small_cnn() -> ImageClassifier:
    return ImageClassifier(SmallCNN(num_classes=10, in_channels=3, width=32), 10)


def preact_resnet18() -> ImageClassifier:
    return ImageClassifier(PreActResNet18(num_classes=10), 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats, SmallCNN only")
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(torch.get_num_threads())
    steps, repeats = (8, 2) if args.quick else (12, 3)
    measure("SmallCNN (width 32), 3×32×32, batch 128", small_cnn, steps, repeats, args.accelerator)
    if not args.quick:
        measure("PreAct ResNet-18, 3×32×32, batch 128", preact_resnet18, 6, 2, args.accelerator)


if __name__ == "__main__":
    main()
