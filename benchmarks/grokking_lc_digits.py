"""Scaled-down grokking on digits: does local complexity (LC) rise and then fall within about an hour on 2 cores?

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/grokking_lc_digits.py --steps 20000
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/grokking_lc_digits.py --steps 60000 \\
        --init-scale 8 --weight-decay 0.1 --lr 1e-3 --train-size 1000 --radius 0.5

The setting is the Omnigrok / Humayun et al. MNIST recipe scaled to scikit-learn's digits: a ReLU MLP
(64-width-...-10) with every parameter multiplied by ``--init-scale`` at initialization,
:class:`~lightning_regs.tasks.grokking_classifier.GrokkingClassifier` (MSE on one-hot targets, AdamW,
constant learning rate), ``--train-size`` training digits (the rest held out), batch 200. The
:class:`~lightning_regs.callbacks.local_complexity_monitor.LocalComplexityMonitor` measures LC around
training, held-out and random points at ``--measurements`` log-spaced steps with few points and
directions, so that most of the time goes to training; at the same steps the accuracy on the whole
training and held-out sets is computed. Prints a table (step, train acc, held-out acc, LC per set),
writes the history as JSON (``--out``) and a figure (``--figure``: LC against log step, accuracies
on a second axis). ``--max-minutes`` stops the run early (the schedule stays the one of ``--steps``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_regs.callbacks.local_complexity_monitor import LocalComplexityMonitor
from lightning_regs.datamodules.digits_subset import DigitsSubsetDataModule
from lightning_regs.models import MLP
from lightning_regs.tasks.grokking_classifier import GrokkingClassifier

NUM_DIGITS = 1797
SETS = ("train", "heldout", "random")


class AccuracyAtMeasurements(pl.Callback):
    """Full train and held-out accuracy at every step the LC monitor measured; stops after ``max_seconds``."""

    def __init__(self, monitor: LocalComplexityMonitor, max_seconds: float | None) -> None:
        self.monitor = monitor
        self.max_seconds = max_seconds
        self.rows: dict[int, dict[str, float]] = {}
        self.started = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.perf_counter()
        self._record(trainer, pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._record(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._record(trainer, pl_module)
        if self.max_seconds is not None and time.perf_counter() - self.started > self.max_seconds:
            trainer.should_stop = True

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        steps = self.monitor.measured_steps
        if not steps or steps[-1] in self.rows:
            return
        datasets = trainer.datamodule.datasets
        self.rows[steps[-1]] = {
            "train_acc": accuracy(pl_module, datasets["train"].images, datasets["train"].targets),
            "heldout_acc": accuracy(pl_module, datasets["val"].images, datasets["val"].targets),
            "wall_s": time.perf_counter() - self.started,
        }


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` in eval mode (its training flag restored)."""
    was_training = model.training
    model.eval()
    predictions = model(images.to(next(model.parameters()).device)).argmax(dim=1).cpu()
    model.train(was_training)
    return float((predictions == targets).float().mean())


def build(args: argparse.Namespace) -> tuple[GrokkingClassifier, DigitsSubsetDataModule, LocalComplexityMonitor]:
    """The task, the data (``train_size`` digits to train on, the rest held out) and the LC monitor."""
    backbone = MLP(
        in_features=64,
        num_classes=10,
        width=args.width,
        depth=args.depth,
        activation="relu",
        init_scale=args.init_scale,
    )
    task = GrokkingClassifier(backbone, num_classes=10, loss="mse", lr=args.lr, weight_decay=args.weight_decay)
    data = DigitsSubsetDataModule(
        steps_per_epoch=1000,
        batch_size=args.batch_size,
        val_fraction=1 - args.train_size / NUM_DIGITS,
        test_fraction=0.0,
        seed=args.seed,
    )
    monitor = LocalComplexityMonitor(
        radius=args.radius,
        num_directions=args.directions,
        num_points=args.points,
        sets=SETS,
        num_measurements=args.measurements,
        max_overhead=None,
        plot=False,
        seed=args.seed,
    )
    return task, data, monitor


def history(monitor: LocalComplexityMonitor, accuracies: AccuracyAtMeasurements) -> list[dict[str, float]]:
    """One row per measured step: accuracies, LC per set and the wall time so far."""
    rows = []
    for index, step in enumerate(monitor.measured_steps):
        row: dict[str, float] = {"step": step, **accuracies.rows.get(step, {})}
        row.update({name: monitor.history[f"lc/{name}"][index] for name in SETS})
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, float]]) -> None:
    print(f"{'step':>7} {'wall_s':>7} {'train':>6} {'heldout':>7} {'LC train':>9} {'LC heldout':>10} {'LC random':>9}")
    for row in rows:
        print(
            f"{int(row['step']):>7} {row.get('wall_s', float('nan')):>7.0f} {row.get('train_acc', float('nan')):>6.3f}"
            f" {row.get('heldout_acc', float('nan')):>7.3f} {row['train']:>9.2f} {row['heldout']:>10.2f}"
            f" {row['random']:>9.2f}"
        )


def draw(rows: list[dict[str, float]], title: str, path: Path) -> None:
    """LC per set against log(step + 1), accuracies on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    steps = [row["step"] + 1 for row in rows]
    figure = Figure(figsize=(7.5, 4.2), dpi=100)
    lc_axes = figure.subplots()
    for name in SETS:
        lc_axes.plot(steps, [row[name] for row in rows], ".-", label=f"LC {name}")
    lc_axes.set_xscale("log")
    lc_axes.set_xlabel("optimizer step + 1")
    lc_axes.set_ylabel("local complexity (neurons)")
    lc_axes.grid(alpha=0.3)
    acc_axes = lc_axes.twinx()
    for key, style in (("train_acc", "k--"), ("heldout_acc", "k:")):
        acc_axes.plot(steps, [row.get(key, float("nan")) for row in rows], style, label=key.replace("_", " "))
    acc_axes.set_ylabel("accuracy")
    acc_axes.set_ylim(0, 1.02)
    handles = lc_axes.get_legend_handles_labels()
    more = acc_axes.get_legend_handles_labels()
    lc_axes.legend(handles[0] + more[0], handles[1] + more[1], fontsize="small", loc="upper left")
    lc_axes.set_title(title, fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop early after this wall time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init-scale", type=float, default=8.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--width", type=int, default=200)
    parser.add_argument("--depth", type=int, default=3, help="Linear modules (3: two hidden layers)")
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--radius", type=float, default=0.5, help="LC radius, normalized input units")
    parser.add_argument("--directions", type=int, default=8, help="LC directions P")
    parser.add_argument("--points", type=int, default=200, help="LC points per set")
    parser.add_argument("--measurements", type=int, default=30, help="log-spaced LC measurements")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/grokking_lc_digits.json")
    parser.add_argument("--figure", default="docs/methods/figures/grokking_lc_digits.png")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, verbose=False)
    task, data, monitor = build(args)
    accuracies = AccuracyAtMeasurements(monitor, None if args.max_minutes is None else 60 * args.max_minutes)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=args.steps,
        max_epochs=-1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[monitor, accuracies],
    )
    started = time.perf_counter()
    trainer.fit(task, datamodule=data)
    wall = time.perf_counter() - started
    rows = history(monitor, accuracies)
    print_table(rows)
    summary = {
        "settings": vars(args),
        "steps_done": trainer.global_step,
        "wall_s": round(wall, 1),
        "lc_monitor_s": round(monitor.measure_seconds, 1),
        "history": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    title = (
        f"digits, MLP 64-{args.width}x{args.depth - 1}-10, init x{args.init_scale:g}, MSE, AdamW lr {args.lr:g} "
        f"wd {args.weight_decay:g}, {args.train_size} train\nLC r={args.radius:g}, P={args.directions}, "
        f"{args.points} pts ({trainer.global_step} steps, {wall / 60:.0f} min)"
    )
    draw(rows, title, Path(args.figure))
    print(f"json: {out}  figure: {args.figure}")


if __name__ == "__main__":
    main()
