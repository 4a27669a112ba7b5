"""The information plane of a funnel MLP on the digits data: tanh against ReLU, the three estimators side by side.

    python benchmarks/information_plane_digits.py              # 100 epochs per run, every 5 epochs, the figure
    python benchmarks/information_plane_digits.py --epochs 30  # shorter
    python benchmarks/information_plane_digits.py --overhead   # InformationPlaneMonitor's cost at its defaults
    python benchmarks/information_plane_digits.py --settings   # how far each setting moves the values
    python benchmarks/information_plane_digits.py --calibrate  # the estimators' cost in forwards (the monitor's COST)

Two runs, the same seed and recipe (64 → 32 → 16 → 8 → 4 → 10, AdamW 1e-3, no weight decay, constant rate, batch
64), one with tanh and one with ReLU after each hidden Linear: the shape of the networks Shwartz-Ziv & Tishby,
Saxe et al. and Chelombiev et al. study, on the 8×8 digits. Each run carries three InformationPlaneMonitors, one
per estimator, at their defaults (30 adaptive bins; σ = 0.01; noise 0.1 of the scale, 8 components, k = 5; 8
half-samples), measuring every hidden activation on the whole training split (N = 1,257, so deterministic
estimates saturate at log2 N = 10.30 bits). Chelombiev et al. report compression (I(X;T) falling after its rise)
with adaptive estimators in tanh and in ReLU networks; Saxe et al. report it for tanh and not for ReLU with a
fixed binning and KDE. Prints I(X;T) at the start, its peak and the end, I(T;Y) at the start and the end, and
writes docs/methods/figures/information_plane_digits.png.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from _representation import FIGURES, QUIET, overhead_at_defaults, setup
from lightning.pytorch import Trainer, seed_everything
from torch import nn

from lightning_regs.callbacks import InformationPlaneMonitor
from lightning_regs.callbacks._information_plane_plot import information_plane_figure
from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.tasks import ImageClassifier

ESTIMATORS = ("adaptive_binning", "kde_upper", "lossy_knn")
WIDTHS = (32, 16, 8, 4)


def funnel(activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    previous = 64
    for width in WIDTHS:
        layers += [nn.Linear(previous, width), activation()]
        previous = width
    return nn.Sequential(*layers, nn.Linear(previous, 10))


Run = tuple[list[InformationPlaneMonitor], int, float, ImageClassifier]  # monitors, batches/epoch, val acc, task


def run(activation: type[nn.Module], epochs: int, every: int) -> Run:
    seed_everything(0, verbose=False)
    monitors = [
        InformationPlaneMonitor(estimator=name, prefix=name, num_points=None, every_n_epochs=every, max_overhead=None,
                                plot=False)
        for name in ESTIMATORS
    ]  # fmt: skip
    task = ImageClassifier(funnel(activation), 10, optimizer="adamw", lr=1e-3, weight_decay=0.0, scheduler="constant")
    data = DigitsDataModule(batch_size=64, seed=0)
    trainer = Trainer(max_epochs=epochs, callbacks=monitors, limit_val_batches=0, **QUIET)
    trainer.fit(task, data)
    val = data.datasets["val"]
    task.eval()
    with torch.no_grad():
        accuracy = float((task(val.images).argmax(dim=1) == val.targets).float().mean())
    return monitors, trainer.num_training_batches, accuracy, task


def report(name: str, monitors: list[InformationPlaneMonitor], per_epoch: int, accuracy: float) -> None:
    print(f"\n{name} (val acc {accuracy:.3f}); I(X;T): epoch 0 → peak (epoch) → end ± se; I(T;Y): 0 → end ± se")
    for monitor in monitors:
        epochs = [step // per_epoch for step in monitor.measured_steps]
        for key in (k for k in monitor.history if k.endswith("/ixt")):
            ixt, ity = monitor.history[key], monitor.history[f"{key[:-4]}/ity"]
            ixt_se, ity_se = monitor.history[f"{key}_se"], monitor.history[f"{key[:-4]}/ity_se"]
            peak = max(range(len(ixt)), key=ixt.__getitem__)
            start, top, end = f"{ixt[0]:6.2f}", f"{ixt[peak]:6.2f} ({epochs[peak]:3d})", f"{ixt[-1]:6.2f}"
            print(
                f"  {key[:-4]:<28} {start} → {top} → {end} ± {ixt_se[-1]:.2f}"
                f"   |  {ity[0]:5.2f} → {ity[-1]:5.2f} ± {ity_se[-1]:.2f}"
            )


def figure(runs: dict[str, Run], path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 8.4), dpi=90)
    grid = fig.subplots(len(runs), len(ESTIMATORS))
    for row, (name, (monitors, *_)) in enumerate(runs.items()):
        for column, monitor in enumerate(monitors):
            curves = {
                key[len(monitor.prefix) + 1 : -4]: (monitor.history[key], monitor.history[f"{key[:-4]}/ity"])
                for key in monitor.history
                if key.endswith("/ixt")
            }
            information_plane_figure(monitor.measured_steps, curves, title=f"{name}: {monitor.estimator}",
                                     axes=grid[row][column])  # fmt: skip
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


def settings(epochs: int) -> None:
    """The trained tanh funnel's layers on the whole training split: each estimate at its default and one other."""
    from lightning_regs.functional import adaptive_binning, kde_upper, lossy_knn

    monitors, _, _, task = run(nn.Tanh, epochs, epochs)
    images, labels = monitors[0].labelled_points("train")
    features: dict[str, torch.Tensor] = {}
    hooks = [module.register_forward_hook(lambda m, a, out, name=name: features.__setitem__(name, out.double()))
             for name, module in task.backbone.named_children() if isinstance(module, nn.Tanh)]  # fmt: skip
    with torch.no_grad():
        task.eval()(images)
    for hook in hooks:
        hook.remove()

    def knn(t: torch.Tensor, **kwargs: float) -> tuple[float, float]:
        return lossy_knn(t, labels, generator=torch.Generator().manual_seed(0), **kwargs)

    rows = {
        "bins 30 | 100": lambda t: (adaptive_binning(t, labels, 30, "tanh"), adaptive_binning(t, labels, 100, "tanh")),
        "bins 30 | N = 256": lambda t: (
            adaptive_binning(t, labels, 30, "tanh"),
            adaptive_binning(t[:256], labels[:256], 30, "tanh"),
        ),
        "KDE σ 0.01 | 0.1": lambda t: (kde_upper(t, labels, 0.01), kde_upper(t, labels, 0.1)),
        "kNN noise 0.1 | 0.05": lambda t: (knn(t), knn(t, noise_ratio=0.05)),
        "kNN 8 | 4 components": lambda t: (knn(t), knn(t, num_components=4)),
        "kNN k 5 | 10": lambda t: (knn(t), knn(t, k=10)),
    }
    print(f"tanh funnel after {epochs} epochs, N = {len(labels)}: (I(X;T), I(T;Y)) default | other, bits")
    for what, pair in rows.items():
        for layer, t in features.items():
            first, second = pair(t)
            print(f"  {what:<22} layer {layer}: ({first[0]:.2f}, {first[1]:.2f}) | ({second[0]:.2f}, {second[1]:.2f})")


def calibrate() -> None:
    """Each estimator's seconds on N = 512 points of d units, in forwards of one digit through the quickstart CNN."""
    import time

    from lightning_regs.functional import adaptive_binning, kde_upper, lossy_knn
    from lightning_regs.models import SmallCNN

    def seconds(fn: Callable[..., Any], *args: Any, repeats: int = 3) -> float:
        fn(*args)
        started = time.perf_counter()
        for _ in range(repeats):
            fn(*args)
        return (time.perf_counter() - started) / repeats

    model = SmallCNN(num_classes=10, in_channels=1, width=32).eval()
    with torch.no_grad():
        forward = seconds(model, torch.randn(512, 1, 8, 8), repeats=10) / 512
    print(f"a forward of one digit through SmallCNN(width 32): {forward * 1e3:.4f} ms (batches of 512)")
    estimators = {
        "adaptive_binning": lambda z, y: adaptive_binning(z, y, 30, "relu"),
        "kde_upper": kde_upper,
        "lossy_knn": lambda z, y: lossy_knn(z, y, generator=torch.Generator().manual_seed(0)),
    }
    labels = torch.arange(512) % 10
    for name, estimator in estimators.items():
        for width in (16, 64, 256, 1024, 4096):
            z = torch.relu(torch.randn(512, width, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
            full, half = seconds(estimator, z, labels), seconds(estimator, z[:256], labels[:256])
            print(f"  {name:<17} d = {width:5d}: {full / 512 / forward:6.3f} forwards per point, a half-sample "
                  f"{half / full:.2f} of it")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--overhead", action="store_true")
    parser.add_argument("--settings", action="store_true")
    parser.add_argument("--calibrate", action="store_true")
    args = parser.parse_args()
    setup()
    if args.calibrate:
        calibrate()
        return
    if args.settings:
        settings(args.epochs)
        return
    if args.overhead:
        for name in ESTIMATORS:  # lossy_knn needs more than k = 5 probe points of every class: 256 points
            extra = {"num_points": 256} if name == "lossy_knn" else {}
            overhead_at_defaults(lambda name=name, extra=extra: InformationPlaneMonitor(estimator=name, **extra),
                                 repeats=2)  # fmt: skip
        return
    runs = {}
    for name, activation in (("tanh", nn.Tanh), ("ReLU", nn.ReLU)):
        runs[name] = run(activation, args.epochs, args.every)
        report(name, *runs[name][:3])
    figure(runs, str(FIGURES / "information_plane_digits.png"))


if __name__ == "__main__":
    main()
