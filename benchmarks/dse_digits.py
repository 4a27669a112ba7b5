"""DSE and DSMI on the digits data: true labels against shuffled labels (the paper's claims 1 and 2).

    python benchmarks/dse_digits.py              # 100 epochs per run, every 2 epochs, the figure
    python benchmarks/dse_digits.py --epochs 40  # shorter
    python benchmarks/dse_digits.py --overhead   # DiffusionSpectralEntropyMonitor's cost at its defaults

Two runs of the quickstart recipe (SmallCNN width 32, SGD 0.05 Nesterov, weight decay 5e-4, cosine), the same seed:
one on the true labels, one on a fixed random permutation of the 1,257 training labels (memorization). Both are
measured on the same probes: 500 clean training digits and the 270 validation digits, always with their *true*
class ids, so DSMI(Z; Y) says how much the penultimate features know about the real classes. The shuffled run also
logs DSMI with the labels it trains on (``trained``). DSE uses σ = the median pairwise distance (the monitor's
default) and, beside it, the paper's fixed σ = 10; t = 1. Liao, Liu et al. report (1) DSE rises during training and
(2) DSMI with the labels rises when the network generalizes and stays flat when it fits random labels. Prints a
table and writes docs/methods/figures/dse_digits.png.
"""

from __future__ import annotations

import argparse

import torch
from _representation import FIGURES, QUIET, overhead_at_defaults, quickstart_task, setup
from lightning.pytorch import Trainer, seed_everything

from lightning_regs.callbacks import DiffusionSpectralEntropyMonitor
from lightning_regs.datamodules import DigitsDataModule

PROBE = 500


class ShuffledDigits(DigitsDataModule):
    """Digits whose training labels are a fixed random permutation of the true ones (``true_targets`` keeps those)."""

    def setup(self, stage: str | None = None) -> None:
        fresh = not self.datasets
        super().setup(stage)
        if fresh:
            train = self.datasets["train"]
            self.true_targets = train.targets.clone()
            train.targets = train.targets[torch.randperm(len(train), generator=torch.Generator().manual_seed(1))]


def run(shuffled: bool, epochs: int, every: int) -> tuple[dict[str, list[float]], list[float], float]:
    seed_everything(0, verbose=False)
    data = ShuffledDigits(batch_size=64, seed=0) if shuffled else DigitsDataModule(batch_size=64, seed=0)
    data.setup("fit")
    train, val = data.datasets["train"], data.datasets["val"]
    true_targets = data.true_targets if shuffled else train.targets
    probe = torch.randperm(len(train), generator=torch.Generator().manual_seed(2))[:PROBE].sort().values
    images = train.images[probe]
    common = {"every_n_epochs": every, "max_overhead": None, "plot": False}
    median = DiffusionSpectralEntropyMonitor(sets=["train", "heldout"], **common)
    median.set_points(train=(images, true_targets[probe]), heldout=(val.images, val.targets))
    fixed = DiffusionSpectralEntropyMonitor(sigma=10.0, inputs=False, prefix="dse_sigma10", **common)
    fixed.set_points(train=(images, true_targets[probe]))
    trained = DiffusionSpectralEntropyMonitor(inputs=False, prefix="dse_trained", **common)
    trained.set_points(train=(images, train.targets[probe]))  # the labels the network is fitted to
    trainer = Trainer(max_epochs=epochs, callbacks=[median, fixed, trained], limit_val_batches=0, **QUIET)
    task = quickstart_task()
    trainer.fit(task, data)
    task.eval()
    with torch.no_grad():
        accuracy = float((task(train.images).argmax(dim=1) == train.targets).float().mean())
    history = {**median.history}
    history.update({f"sigma10:{k}": v for k, v in fixed.history.items()})
    history.update({f"trained:{k}": v for k, v in trained.history.items()})
    per_epoch = trainer.num_training_batches
    return history, [step / per_epoch for step in median.measured_steps], accuracy


SERIES = {  # column: history key
    "DSE": "dse/penultimate",
    "DSE σ=10": "sigma10:dse_sigma10/penultimate",
    "DSMI(Z;Y) train": "dsmi_y/penultimate",
    "DSMI(Z;Y) held-out": "dsmi_y/penultimate@heldout",
    "DSMI(Z;Y trained)": "trained:dsmi_y/penultimate",
    "DSMI(Z;X)": "dsmi_x/penultimate",
}


def report(name: str, history: dict[str, list[float]], epochs: list[float], accuracy: float) -> None:
    print(f"\n{name}: final training accuracy on the labels trained on {accuracy:.3f}")
    print("epoch | " + " | ".join(SERIES))
    for i, epoch in enumerate(epochs):
        print(f"{epoch:5.0f} | " + " | ".join(f"{history[key][i]:.3f}" for key in SERIES.values()))
    changes = [f"{column} {h[0]:.3f} -> {max(h):.3f} -> {h[-1]:.3f}" for column, h in
               ((column, history[key]) for column, key in SERIES.items())]  # fmt: skip
    print("start -> peak -> end: " + "; ".join(changes))


def figure(runs: dict[str, tuple[dict[str, list[float]], list[float], float]]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.4), dpi=110)
    panels = fig.subplots(1, 3)
    for (name, (history, epochs, _)), color in zip(runs.items(), ("C0", "C3"), strict=True):
        panels[0].plot(epochs, history["dse/penultimate"], color=color, label=f"{name}, σ = median")
        panels[0].plot(epochs, history["sigma10:dse_sigma10/penultimate"], ":", color=color, label=f"{name}, σ = 10")
        panels[1].plot(epochs, history["dsmi_y/penultimate"], color=color, label=f"{name}, train probe")
        panels[1].plot(epochs, history["dsmi_y/penultimate@heldout"], "--", color=color, label=f"{name}, held-out")
        panels[2].plot(epochs, history["trained:dsmi_y/penultimate"], color=color, label=f"{name}, labels trained on")
        panels[2].plot(epochs, history["dsmi_x/penultimate"], "--", color=color, label=f"{name}, DSMI(Z;X)")
    titles = ("DSE of the penultimate features", "DSMI(Z; true class)", "DSMI(Z; trained labels), DSMI(Z; X)")
    for axes, title in zip(panels, titles, strict=True):
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("epoch")
        axes.set_ylabel("bits")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=6.5)
    fig.suptitle("DSE / DSMI on digits (SmallCNN): true labels vs shuffled training labels", fontsize=10)
    fig.tight_layout()
    path = FIGURES / "dse_digits.png"
    fig.savefig(path)
    print(f"figure: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--overhead", action="store_true", help="measure the monitor's cost at its defaults instead")
    args = parser.parse_args()
    setup()
    if args.overhead:
        overhead_at_defaults(DiffusionSpectralEntropyMonitor)
        return
    runs = {
        name: run(name == "shuffled labels", args.epochs, args.every) for name in ("true labels", "shuffled labels")
    }
    for name, result in runs.items():
        report(name, *result)
    figure(runs)


if __name__ == "__main__":
    main()
