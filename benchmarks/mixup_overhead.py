"""Step time of MixUp, CutMix and MixUp + PS-KD (PS-KD's extra forward on the unmixed images) against no callback.

    python benchmarks/mixup_overhead.py            # SmallCNN and PreAct ResNet-18 on random 3×32×32, batch 128
    python benchmarks/mixup_overhead.py --quick    # fewer steps and repeats, SmallCNN only

Runs with each setting are interleaved in one process (baseline, MixUp, CutMix, PS-KD, MixUp + PS-KD, then again),
timed from the second epoch on (when PS-KD reads its table); each ratio is median(step with) / median(step without)
over all repeats. MixUp + PS-KD against PS-KD alone is the cost of the clean forward that keeps mixed predictions
out of PS-KD's table (``ProgressiveSelfKD(rewritten_inputs="clean_forward")``).
"""

from __future__ import annotations

import argparse
import logging
import statistics
from collections.abc import Callable

import torch
from _timing import QUIET, StepTimer
from lightning.pytorch import Callback, Trainer, seed_everything
from pskd_overhead import RandomImages

from lightning_regs.callbacks import CutMix, MixUp, ProgressiveSelfKD
from lightning_regs.models import PreActResNet18, SmallCNN
from lightning_regs.tasks import ImageClassifier

SETTINGS: dict[str, Callable[[], list[Callback]]] = {
    "baseline": list,
    "mixup": lambda: [MixUp(alpha=1.0)],
    "cutmix": lambda: [CutMix(alpha=1.0)],
    "pskd": lambda: [ProgressiveSelfKD(alpha_T=0.8)],
    "mixup+pskd": lambda: [MixUp(alpha=1.0), ProgressiveSelfKD(alpha_T=0.8)],
}


def time_run(make_task, setting: str, steps: int, accelerator: str) -> list[float]:
    seed_everything(0, verbose=False)
    timer = StepTimer(from_epoch=1)
    trainer = Trainer(
        max_epochs=2, limit_train_batches=steps, limit_val_batches=0, accelerator=accelerator, devices=1,
        callbacks=[timer, *SETTINGS[setting]()], **QUIET,
    )  # fmt: skip
    trainer.fit(make_task(), RandomImages(steps * 128, 10, 128))
    return timer.periods


def measure(name: str, make_task, steps: int, repeats: int, accelerator: str) -> None:
    periods: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
    for _ in range(repeats):
        for setting in SETTINGS:
            periods[setting] += time_run(make_task, setting, steps, accelerator)
    median = {setting: statistics.median(values) for setting, values in periods.items()}
    ratios = ", ".join(f"{s} {median[s] / median['baseline']:.3f}×" for s in SETTINGS if s != "baseline")
    clean = median["mixup+pskd"] / median["pskd"]
    print(
        f"{name}: baseline step {median['baseline'] * 1e3:.1f} ms; {ratios}; MixUp+PS-KD / PS-KD {clean:.3f}× "
        f"(the clean forward); {len(periods['baseline'])} timed steps each"
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
