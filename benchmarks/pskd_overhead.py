"""PS-KD's step-time overhead against the same run without it, and its table's bytes per sample.

    python benchmarks/pskd_overhead.py            # quickstart model on digits + PreAct ResNet-18, 32×32, batch 128
    python benchmarks/pskd_overhead.py --quick    # fewer steps

Two measurements, both from the second epoch on (when PS-KD reads the table and mixes targets):

* A/B: runs with and without the callback, interleaved (A B A B ...) in one process; the ratio is
  median(step with PS-KD) / median(step without) over all repeats. Sensitive to machine load.
* in-run: inside the runs with PS-KD, the time spent in the callback's own hooks against the rest of
  the same step; 1 + median(hook time / rest of step). Robust to load, but blind to indirect costs.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
from _timing import QUIET, StepTimer
from lightning.pytorch import LightningDataModule, Trainer, seed_everything
from torch.utils.data import DataLoader

from lightning_regs.callbacks import ProgressiveSelfKD
from lightning_regs.datamodules import DigitsDataModule, EpochShuffleSampler, TensorDictDataset
from lightning_regs.functional import PredictionTable
from lightning_regs.models import PreActResNet18, SmallCNN
from lightning_regs.tasks import ImageClassifier


class RandomImages(LightningDataModule):
    """Random 3×32×32 images and labels of ``num_classes`` classes, in memory."""

    def __init__(self, num_samples: int, num_classes: int, batch_size: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.dataset = TensorDictDataset(
            torch.randn(num_samples, 3, 32, 32, generator=generator),
            torch.randint(0, num_classes, (num_samples,), generator=generator),
        )
        self.batch_size = batch_size
        self.num_classes = num_classes

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, self.batch_size, sampler=EpochShuffleSampler(len(self.dataset)))


class TimedProgressiveSelfKD(ProgressiveSelfKD):
    """PS-KD that adds up the wall time of its own hooks per step (epochs >= 1)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hook_seconds: list[float] = []
        self._step_seconds = 0.0

    def _timed(self, hook, trainer, *args) -> None:
        if trainer.accelerator is not None and torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        hook(trainer, *args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._step_seconds += time.perf_counter() - start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step_seconds = 0.0
        self._timed(super().on_train_batch_start, trainer, pl_module, batch, batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._timed(super().on_train_batch_end, trainer, pl_module, outputs, batch, batch_idx)
        if trainer.current_epoch >= 1 and batch_idx > 0:
            self.hook_seconds.append(self._step_seconds)


def time_run(make_task, make_data, with_pskd: bool, steps: int, accelerator: str) -> tuple[list[float], list[float]]:
    seed_everything(0, verbose=False)
    timer = StepTimer(from_epoch=1)
    pskd = TimedProgressiveSelfKD(alpha_T=0.8)
    callbacks = [timer, pskd] if with_pskd else [timer]
    trainer = Trainer(
        max_epochs=2,
        limit_train_batches=steps,
        limit_val_batches=0,
        accelerator=accelerator,
        devices=1,
        callbacks=callbacks,
        **QUIET,
    )
    trainer.fit(make_task(), make_data())
    # The timer sees step k's period at the start of step k+1: pair hook times with the following period.
    return timer.periods, pskd.hook_seconds[: len(timer.periods)]


def overhead(name: str, make_task, make_data, steps: int, repeats: int, accelerator: str) -> None:
    periods: dict[bool, list[float]] = {False: [], True: []}
    shares: list[float] = []
    for _ in range(repeats):
        for with_pskd in (False, True):
            run_periods, hook_seconds = time_run(make_task, make_data, with_pskd, steps, accelerator)
            periods[with_pskd] += run_periods
            shares += [hook / (period - hook) for hook, period in zip(hook_seconds, run_periods, strict=False)]
    base, pskd = statistics.median(periods[False]), statistics.median(periods[True])
    print(
        f"{name}: step {base * 1e3:.1f} ms without, {pskd * 1e3:.1f} ms with PS-KD; A/B ratio {pskd / base:.3f}; "
        f"in-run ratio {1 + statistics.median(shares):.4f} ({len(periods[True])} timed steps each)"
    )


def table_bytes() -> None:
    print("table bytes per sample (values + class ids + seen flag):")
    for classes in (10, 100, 1000):
        modes = {
            "float32": PredictionTable(1, classes),
            "float16": PredictionTable(1, classes, "float16"),
            "float16 top-10": PredictionTable(1, classes, "float16", top_k=min(10, classes)),
        }
        row = ", ".join(f"{mode} {table.bytes_per_sample} B" for mode, table in modes.items())
        print(f"  C={classes}: {row}")
    imagenet = 1_281_167
    for mode, table in {
        "float32": PredictionTable(1, 1000),
        "float16 top-10": PredictionTable(1, 1000, "float16", 10),
    }.items():
        print(f"  ImageNet-1k ({imagenet:,} samples), {mode}: {imagenet * table.bytes_per_sample / 1e6:,.0f} MB")


def main() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--skip-preact", action="store_true")
    args = parser.parse_args()
    repeats = 2 if args.quick else 3
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, accelerator {args.accelerator}")
    table_bytes()
    overhead(
        "quickstart SmallCNN, digits 8×8, batch 64",
        lambda: ImageClassifier(SmallCNN(num_classes=10), 10, lr=0.05),
        lambda: DigitsDataModule(batch_size=64),
        steps=19,
        repeats=repeats * 2,
        accelerator=args.accelerator,
    )
    if not args.skip_preact:
        steps = 4 if args.quick else 6
        overhead(
            "PreAct ResNet-18, 3×32×32, batch 128, 100 classes",
            lambda: ImageClassifier(PreActResNet18(num_classes=100), 100, lr=0.1),
            lambda: RandomImages(128 * steps, 100, 128),
            steps=steps,
            repeats=repeats,
            accelerator=args.accelerator,
        )


if __name__ == "__main__":
    main()
