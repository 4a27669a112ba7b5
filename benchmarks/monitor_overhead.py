"""What the monitors cost at their defaults, and that their plan does not depend on the machine's load.

    python benchmarks/monitor_overhead.py                          # SmallCNN on digits, 1,000 steps
    python benchmarks/monitor_overhead.py --model resnet18         # torchvision resnet18 on digits 3×32×32
    python benchmarks/monitor_overhead.py --model resnet18 --monitors llc ip --load 0   # two monitors, quiet only

One baseline fit without monitors, then the same fit (seeds and data identical) with the six monitors at
their defaults (``LocalComplexityMonitor()``, ``AdversarialRobustnessMonitor()``, ``NeuralCollapseMonitor()``,
``DiffusionSpectralEntropyMonitor()``, ``LocalLearningCoefficientMonitor()``, ``InformationPlaneMonitor()``) twice:
on the machine as it is ("quiet") and with ``--load`` processes spinning on the CPU beside it ("loaded"). For each
monitor the script prints the measured steps, their count, the points per set, the planned (counted) overhead — the
monitor's forward passes ÷ the training's, a training sample counted as 3 — and the measured wall-clock overhead
(seconds measuring ÷ seconds training), and whether the quiet and loaded runs measured the same steps.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import time

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_regs.callbacks import (
    AdversarialRobustnessMonitor,
    DiffusionSpectralEntropyMonitor,
    InformationPlaneMonitor,
    LocalComplexityMonitor,
    LocalLearningCoefficientMonitor,
    NeuralCollapseMonitor,
    ScheduledMonitor,
)
from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.models import SmallCNN
from lightning_regs.tasks import ImageClassifier


def build(model: str, batch: int) -> tuple[ImageClassifier, DigitsDataModule]:
    if model == "resnet18":
        from torchvision.models import resnet18

        data = DigitsDataModule(batch_size=batch, image_size=32, channels=3)
        return ImageClassifier(resnet18(num_classes=10), 10, lr=0.05), data
    return ImageClassifier(SmallCNN(num_classes=10), 10, lr=0.05), DigitsDataModule(batch_size=batch)


MONITORS = {
    "lc": LocalComplexityMonitor,
    "pgd": AdversarialRobustnessMonitor,
    "nc": NeuralCollapseMonitor,
    "dse": DiffusionSpectralEntropyMonitor,
    "llc": LocalLearningCoefficientMonitor,
    "ip": InformationPlaneMonitor,
}


def monitors(names: list[str]) -> list[ScheduledMonitor]:
    return [MONITORS[name](plot=False) for name in names]


def fit(model: str, steps: int, batch: int, callbacks: list[ScheduledMonitor]) -> float:
    seed_everything(0, verbose=False)
    task, data = build(model, batch)
    trainer = Trainer(
        max_steps=steps, limit_val_batches=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks,
    )  # fmt: skip
    started = time.perf_counter()
    trainer.fit(task, data)
    return time.perf_counter() - started


def spin(stop: multiprocessing.synchronize.Event) -> None:
    value = 0
    while not stop.is_set():
        value = (value * 7 + 1) % 1_000_003


def monitored_fit(args: argparse.Namespace, load: int) -> tuple[float, list[ScheduledMonitor]]:
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=spin, args=(stop,), daemon=True) for _ in range(load)]
    for process in spinners:
        process.start()
    try:
        measured = monitors(args.monitors)
        return fit(args.model, args.steps, args.batch, measured), measured
    finally:
        stop.set()
        for process in spinners:
            process.join()


def report(label: str, seconds: float, baseline: float, measured: list[ScheduledMonitor]) -> None:
    measuring = sum(monitor.measure_seconds for monitor in measured)
    training = seconds - measuring
    print(f"  {label}: fit {seconds:.1f} s = {seconds / baseline:.2f}x the quiet baseline", flush=True)
    for monitor in measured:
        steps = monitor.measured_steps
        shown = steps if len(steps) <= 12 else [*steps[:6], "...", *steps[-2:]]
        print(
            f"    {type(monitor).__name__:32s} {len(steps):2d} measured, {monitor.points_per_set} points/set, "
            f"counted {monitor.planned_overhead:.1%}, wall-clock {monitor.measure_seconds / training:.1%}; "
            f"steps {shown}",
            flush=True,
        )


def main() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smallcnn", "resnet18"], default="smallcnn")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--load", type=int, default=2, help="busy processes beside the loaded run; 0: no loaded run")
    parser.add_argument("--monitors", nargs="+", choices=list(MONITORS), default=list(MONITORS))
    args = parser.parse_args()
    torch.set_num_threads(2)
    baseline = fit(args.model, args.steps, args.batch, [])
    print(f"{args.model}, {args.steps} steps, batch {args.batch}: baseline fit {baseline:.1f} s (quiet)", flush=True)
    runs = {}
    settings = [("quiet", 0)] + [(f"loaded ({args.load} busy processes)", args.load)] * (args.load > 0)
    for label, load in settings:
        seconds, measured = monitored_fit(args, load)
        report(label, seconds, baseline, measured)
        runs[label] = measured
    if len(runs) < 2:
        return
    quiet, loaded = runs.values()
    same = all(a.measured_steps == b.measured_steps for a, b in zip(quiet, loaded, strict=True))
    print(f"  same measured steps quiet and loaded: {'yes' if same else 'NO'}", flush=True)


if __name__ == "__main__":
    main()
