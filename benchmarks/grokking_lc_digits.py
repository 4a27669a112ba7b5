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

Delayed robustness: :class:`~lightning_regs.callbacks.robustness_monitor.AdversarialRobustnessMonitor` attacks
every held-out digit with PGD-linf (10 steps, step epsilon/4) at the same steps, once per ``--robust-epsilons``
value (normalized input units). ``--seeds 0 1 2 3 4`` runs one seed after the other (one JSON per seed:
``--out`` gets ``_seed<N>`` before its suffix; the trained task's state dict is saved beside it as ``.pt``)
and prints the phases of every seed and their mean (the LC
minimum while the training set is being fitted, the peak after it, the end; the steps at which held-out
accuracy reaches 0.95 and PGD accuracy half its final value); ``--summary-only`` prints it from the JSON files.
``--extra-lc-presets`` (default ``official_mlp``, the official MLP script's count: every Linear output, logits
included, no centre vertex) adds LC on the training points under another preset at the same steps. The figure
then shows every seed (``--figure``; seed ``--seeds[0]`` also gets the one-seed figure).

The local learning coefficient: :class:`~lightning_regs.callbacks.llc_monitor.LocalLearningCoefficientMonitor`
measures λ̂ at the same steps (``--llc-chains`` chains of ``--llc-draws`` SGLD draws on ``--llc-points``-point
minibatches from the training digits, step ``--llc-step``, localisation ``--llc-localization``, nβ = n/log n of
the training set; the task's MSE loss); ``--llc-chains 0`` turns it off. Its curve is the figure's lower panel.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from grokking_figures import draw, draw_plane, draw_seeds, ip_layers

from lightning_regs.callbacks.information_plane_monitor import InformationPlaneMonitor
from lightning_regs.callbacks.llc_monitor import LocalLearningCoefficientMonitor
from lightning_regs.callbacks.local_complexity_monitor import LocalComplexityMonitor
from lightning_regs.callbacks.robustness_monitor import AdversarialRobustnessMonitor
from lightning_regs.datamodules.digits_subset import DigitsSubsetDataModule
from lightning_regs.models import MLP
from lightning_regs.tasks.grokking_classifier import GrokkingClassifier

NUM_DIGITS = 1797
SETS = ("train", "heldout", "random")
FITTED = 0.95  # training accuracy that ends the window of the first descent


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


def build_task(args: argparse.Namespace) -> GrokkingClassifier:
    """The MLP (``width``, ``depth``, every parameter times ``init_scale``) in the MSE/AdamW grokking task."""
    backbone = MLP(
        in_features=64,
        num_classes=10,
        width=args.width,
        depth=args.depth,
        activation="relu",
        init_scale=args.init_scale,
    )
    return GrokkingClassifier(backbone, num_classes=10, loss="mse", lr=args.lr, weight_decay=args.weight_decay)


def build_data(args: argparse.Namespace, seed: int) -> DigitsSubsetDataModule:
    """``train_size`` digits to train on, the rest held out (split by ``seed``)."""
    return DigitsSubsetDataModule(
        steps_per_epoch=1000,
        batch_size=args.batch_size,
        val_fraction=1 - args.train_size / NUM_DIGITS,
        test_fraction=0.0,
        seed=seed,
    )


def build(
    args: argparse.Namespace, seed: int
) -> tuple[
    GrokkingClassifier, DigitsSubsetDataModule, list[LocalComplexityMonitor], list[AdversarialRobustnessMonitor]
]:
    """The task, the data (``train_size`` digits to train on, the rest held out), the LC and PGD monitors.

    The first LC monitor is the library's count (``preset="library"``) on every set; one more per
    ``--extra-lc-presets`` counts on the training points only (prefix ``lc_<preset>``), at the same steps and with
    the same points and directions.
    """
    task, data = build_task(args), build_data(args, seed)
    monitors = [
        LocalComplexityMonitor(
            radius=args.radius,
            num_directions=args.directions,
            num_points=args.points,
            sets=SETS if preset == "library" else ("train",),
            num_measurements=args.measurements,
            preset=preset,
            prefix="lc" if preset == "library" else f"lc_{preset}",
            max_overhead=None,
            plot=False,
            seed=seed,
        )
        for preset in ("library", *args.extra_lc_presets)
    ]
    robustness = [
        AdversarialRobustnessMonitor(
            epsilon=epsilon,
            steps=10,
            norm="linf",
            num_points=None,  # every held-out digit
            num_measurements=args.measurements,
            prefix=robust_prefix(epsilon),
            max_overhead=None,
            plot=False,
            seed=seed,
        )
        for epsilon in args.robust_epsilons
    ]
    return task, data, monitors, robustness


def build_llc(args: argparse.Namespace, seed: int) -> list[LocalLearningCoefficientMonitor]:
    """The LLC monitor at the LC schedule, or none with ``--llc-chains 0``."""
    if not args.llc_chains:
        return []
    return [
        LocalLearningCoefficientMonitor(
            num_chains=args.llc_chains,
            num_draws=args.llc_draws,
            num_burnin=args.llc_burnin,
            num_points=args.llc_points,
            step_size=args.llc_step,
            localization=args.llc_localization,
            pool_size=None,  # every training digit
            num_measurements=args.measurements,
            max_overhead=None,
            plot=False,
            seed=seed,
        )
    ]


def build_information_plane(args: argparse.Namespace, seed: int) -> list[InformationPlaneMonitor]:
    """The information-plane monitor (every ReLU layer, training and held-out probes) at the LC schedule, or none
    with ``--ip-points 0``."""
    if not args.ip_points:
        return []
    return [
        InformationPlaneMonitor(
            estimator=args.ip_estimator,
            sets=("train", "heldout"),
            num_points=args.ip_points,
            num_measurements=args.measurements,
            max_overhead=None,
            plot=False,
            seed=seed,
        )
    ]


def robust_prefix(epsilon: float) -> str:
    return f"robust_eps{epsilon:g}"


def history(
    monitors: list[LocalComplexityMonitor],
    accuracies: AccuracyAtMeasurements,
    robustness: list[AdversarialRobustnessMonitor],
    llc: Sequence[LocalLearningCoefficientMonitor] = (),
    information: Sequence[InformationPlaneMonitor] = (),
) -> list[dict[str, float]]:
    """One row per measured step: accuracies, LC per set (``<preset>/train`` for the extra presets), PGD accuracy
    per epsilon, λ̂ with its error (``llc``, ``llc_se``) and what the chains' traces say (``llc_rise``,
    ``llc_flagged``), the information plane's values (as the monitor logs them, ``ip/<layer>/ixt`` …) and the wall
    time so far."""
    monitor, *extra = monitors
    robust_at = {
        (robust.prefix, step): robust.history[f"{robust.prefix}/acc"][index]
        for robust in robustness
        for index, step in enumerate(robust.measured_steps)
    }
    rows = []
    for index, step in enumerate(monitor.measured_steps):
        row: dict[str, float] = {"step": step, **accuracies.rows.get(step, {})}
        row.update({name: monitor.history[f"lc/{name}"][index] for name in SETS})
        row.update({f"{m.preset}/train": m.history[f"{m.prefix}/train"][index] for m in extra})
        row.update({r.prefix: robust_at[(r.prefix, step)] for r in robustness if (r.prefix, step) in robust_at})
        for sampler in llc:
            if step in sampler.measured_steps:
                at = sampler.measured_steps.index(step)
                row.update({"llc": sampler.history["llc/mean"][at], "llc_se": sampler.history["llc/mean_se"][at]})
                row.update({f"llc_{key}": sampler.history[f"llc/{key}"][at] for key in ("trace_rise", "flagged")})
        for plane in information:
            if step in plane.measured_steps:
                at = plane.measured_steps.index(step)
                row.update({name: values[at] for name, values in plane.history.items() if name.count("/") == 2})
        rows.append(row)
    return rows


def phases(rows: list[dict[str, float]], robust_keys: list[str]) -> dict[str, float]:
    """The LC phases on training points and when generalization and robustness arrive.

    ``min``: the lowest LC up to the step at which training accuracy first reaches ``FITTED`` (the first descent,
    while the training set is being fitted; a later minimum would be the final descent); ``peak``: the highest LC
    after that minimum (the ascent); ``end``: the last LC. Steps: the peak, held-out accuracy first >= 0.95, PGD
    accuracy first >= half its final value.
    """
    lc = [row["train"] for row in rows]
    fitted = next((i for i, row in enumerate(rows) if row.get("train_acc", 0.0) >= FITTED), len(rows) - 1)
    low, peak = _min_then_peak(lc, fitted)
    result = {
        "lc_start": lc[0],
        "lc_min": lc[low],
        "step_min": rows[low]["step"],
        "lc_peak": lc[peak],
        "step_peak": rows[peak]["step"],
        "lc_end": lc[-1],
        "heldout_at_peak": rows[peak].get("heldout_acc", float("nan")),
        "heldout_end": rows[-1].get("heldout_acc", float("nan")),
        "step_generalized": _first_step(rows, "heldout_acc", 0.95),
    }
    for key in (k for k in rows[0] if k.endswith("/train")):
        preset = key.removesuffix("/train")
        other = [row[key] for row in rows]
        other_low, other_peak = _min_then_peak(other, fitted)
        result.update(
            {
                f"{preset}_start": other[0],
                f"{preset}_min": other[other_low],
                f"{preset}_peak": other[other_peak],
                f"step_{preset}_peak": rows[other_peak]["step"],
                f"{preset}_end": other[-1],
            }
        )
    for key in robust_keys:
        final = rows[-1][key]
        eps = key.removeprefix("robust_")
        result[f"pgd_{eps}_at_peak"] = rows[peak][key]
        result[f"pgd_{eps}_end"] = final
        result[f"pgd_{eps}_max"] = max(row[key] for row in rows)
        result[f"step_pgd_{eps}_half"] = _first_step(rows, key, final / 2) if final > 0 else float("nan")
    generalized = next((i for i, row in enumerate(rows) if row.get("heldout_acc", 0.0) >= 0.95), len(rows) - 1)
    if "llc" in rows[0]:
        llc = [row["llc"] for row in rows]
        top = max(range(len(llc)), key=lambda i: llc[i] if llc[i] == llc[i] else -math.inf)
        result.update(
            {
                "llc_fitted": llc[fitted],
                "llc_generalized": llc[generalized],
                "llc_at_lc_peak": llc[peak],
                "llc_max": llc[top],
                "step_llc_max": rows[top]["step"],
                "llc_end": llc[-1],
                "llc_flagged_measurements": sum(row.get("llc_flagged", 0.0) > 0 for row in rows),
            }
        )
    result.update(information_phases(rows, fitted, generalized))
    return result


def information_phases(rows: list[dict[str, float]], fitted: int, generalized: int) -> dict[str, float]:
    """Per layer (training probe): ``I(X;T)`` and ``I(T;Y)`` when the training set is fitted, at generalization and
    at the end, the highest ``I(X;T)`` and its step, and the compression after it (highest minus end)."""
    result: dict[str, float] = {}
    for layer in ip_layers(rows):
        ixt = [row[f"ip/{layer}/ixt"] for row in rows]
        ity = [row[f"ip/{layer}/ity"] for row in rows]
        top = max(range(len(ixt)), key=lambda i: ixt[i])
        result.update(
            {
                f"ixt_{layer}_fitted": ixt[fitted],
                f"ixt_{layer}_generalized": ixt[generalized],
                f"ixt_{layer}_max": ixt[top],
                f"step_ixt_{layer}_max": rows[top]["step"],
                f"ixt_{layer}_end": ixt[-1],
                f"ixt_{layer}_compression": ixt[top] - ixt[-1],
                f"ity_{layer}_fitted": ity[fitted],
                f"ity_{layer}_generalized": ity[generalized],
                f"ity_{layer}_end": ity[-1],
            }
        )
    return result


def _min_then_peak(values: list[float], fitted: int) -> tuple[int, int]:
    """The index of the lowest value up to ``fitted`` and of the highest value from there on."""
    low = min(range(fitted + 1), key=lambda i: values[i])
    return low, max(range(low, len(values)), key=lambda i: values[i])


def _first_step(rows: list[dict[str, float]], key: str, threshold: float) -> float:
    return next((row["step"] for row in rows if row.get(key, -1.0) >= threshold), float("nan"))


def print_phases(per_seed: dict[int, dict[str, float]]) -> None:
    keys = list(next(iter(per_seed.values())))
    print("\nphases on training points (LC) and when generalization / robustness arrive, per seed:")
    print(f"{'':<20}" + "".join(f"{f'seed {seed}':>10}" for seed in per_seed) + f"{'mean':>10}{'std':>8}")
    for key in keys:
        values = [per_seed[seed][key] for seed in per_seed]
        finite = [v for v in values if v == v]
        mean = statistics.mean(finite) if finite else float("nan")
        spread = statistics.stdev(finite) if len(finite) > 1 else 0.0
        print(f"{key:<20}" + "".join(f"{v:>10.3f}" for v in values) + f"{mean:>10.3f}{spread:>8.3f}")
    ascents = [p["lc_peak"] - p["lc_min"] for p in per_seed.values()]
    descents = [p["lc_peak"] - p["lc_end"] for p in per_seed.values()]
    print(f"{'ascent (peak-min)':<20}" + "".join(f"{v:>10.3f}" for v in ascents) + f"{statistics.mean(ascents):>10.3f}")
    print(
        f"{'descent (peak-end)':<20}" + "".join(f"{v:>10.3f}" for v in descents) + f"{statistics.mean(descents):>10.3f}"
    )


def print_table(rows: list[dict[str, float]], robust_keys: list[str]) -> None:
    header = (
        f"{'step':>7} {'wall_s':>7} {'train':>6} {'heldout':>7} {'LC train':>9} {'LC heldout':>10} {'LC random':>9}"
    )
    layer = (ip_layers(rows) or [None])[-1]
    header += "".join(f" {key:>17}" for key in robust_keys) + (
        f" {'LLC ± se':>17} {'flag':>4}" if "llc" in rows[0] else ""
    )
    print(header + (f" {f'I(X;T) {layer}':>14} {'I(T;Y)':>7}" if layer else ""))
    for row in rows:
        llc = f" {row['llc']:>9.2f} ± {row['llc_se']:<5.2f} {int(row['llc_flagged']):>4}" if "llc" in row else ""
        if layer and f"ip/{layer}/ixt" in row:
            llc += f" {row[f'ip/{layer}/ixt']:>14.2f} {row[f'ip/{layer}/ity']:>7.2f}"
        print(
            f"{int(row['step']):>7} {row.get('wall_s', float('nan')):>7.0f} {row.get('train_acc', float('nan')):>6.3f}"
            f" {row.get('heldout_acc', float('nan')):>7.3f} {row['train']:>9.2f} {row['heldout']:>10.2f}"
            f" {row['random']:>9.2f}" + "".join(f" {row.get(key, float('nan')):>17.3f}" for key in robust_keys) + llc
        )


def seed_path(out: Path, seed: int, several: bool) -> Path:
    return out.with_name(f"{out.stem}_seed{seed}{out.suffix}") if several else out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop each run early after this wall time")
    parser.add_argument("--seed", type=int, default=None, help="one seed (the same as --seeds N)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="several seeds, one after the other")
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
    parser.add_argument(
        "--robust-epsilons", type=float, nargs="*", default=[0.25], help="PGD-linf radii (normalized units); none: off"
    )
    parser.add_argument(
        "--extra-lc-presets",
        nargs="*",
        default=["official_mlp"],
        choices=["official", "official_mlp"],
        help="more LC counts on the training points (preset 'library' is always measured)",
    )
    parser.add_argument("--llc-chains", type=int, default=4, help="LLC chains; 0: no LLC monitor")
    parser.add_argument("--llc-draws", type=int, default=200, help="SGLD draws per chain")
    parser.add_argument("--llc-burnin", type=int, default=200, help="SGLD steps per chain before the first draw")
    parser.add_argument("--llc-points", type=int, default=100, help="SGLD minibatch")
    # See docs/benchmarks.md: at gamma 100 no step size settled within 400 steps at the end of training (the
    # localisation's relaxation time is 2 / (eps gamma) steps); at gamma 1000, eps 1e-5, 3e-5 and 1e-4 agreed.
    parser.add_argument("--llc-step", type=float, default=1e-5, help="SGLD step size")
    parser.add_argument("--llc-localization", type=float, default=1000.0, help="SGLD localisation gamma")
    parser.add_argument("--ip-points", type=int, default=500, help="information-plane probe size; 0: no IP monitor")
    parser.add_argument("--ip-estimator", default="lossy_knn", choices=["adaptive_binning", "kde_upper", "lossy_knn"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/grokking_lc_digits.json"))
    parser.add_argument("--figure", type=Path, default=Path("docs/methods/figures/grokking_lc_digits.png"))
    parser.add_argument("--seeds-figure", type=Path, default=Path("docs/methods/figures/grokking_lc_digits_seeds.png"))
    parser.add_argument(
        "--plane-figure", type=Path, default=Path("docs/methods/figures/grokking_information_plane_digits.png")
    )
    parser.add_argument("--summary-only", action="store_true", help="print and draw from the JSON files")
    args = parser.parse_args()
    if args.seed is not None and args.seeds is not None:
        parser.error("give --seed or --seeds, not both")
    args.seeds = args.seeds or [0 if args.seed is None else args.seed]
    return args


def title_of(settings: dict[str, Any], steps: int, wall: float) -> str:
    return (
        f"digits, MLP 64-{settings['width']}x{settings['depth'] - 1}-10, init x{settings['init_scale']:g}, MSE, "
        f"AdamW lr {settings['lr']:g} wd {settings['weight_decay']:g}, {settings['train_size']} train\n"
        f"LC r={settings['radius']:g}, P={settings['directions']}, {settings['points']} pts ({steps} steps, "
        f"{wall / 60:.0f} min)"
    )


def run_seed(args: argparse.Namespace, seed: int) -> tuple[dict[str, Any], GrokkingClassifier]:
    """Train one seed with the monitors; the summary (settings, cost, history) written as JSON, and the task."""
    pl.seed_everything(seed, verbose=False)
    task, data, monitors, robustness = build(args, seed)
    llc = build_llc(args, seed)
    information = build_information_plane(args, seed)
    accuracies = AccuracyAtMeasurements(monitors[0], None if args.max_minutes is None else 60 * args.max_minutes)
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
        callbacks=[*monitors, *robustness, *llc, *information, accuracies],
    )
    started = time.perf_counter()
    trainer.fit(task, datamodule=data)
    wall = time.perf_counter() - started
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    return {
        "settings": {**settings, "seed": seed},
        "steps_done": trainer.global_step,
        "wall_s": round(wall, 1),
        "lc_monitor_s": round(sum(monitor.measure_seconds for monitor in monitors), 1),
        "robust_monitor_s": round(sum(robust.measure_seconds for robust in robustness), 1),
        "llc_monitor_s": round(sum(sampler.measure_seconds for sampler in llc), 1),
        "ip_monitor_s": round(sum(plane.measure_seconds for plane in information), 1),
        "history": history(monitors, accuracies, robustness, llc, information),
    }, task


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    args = parse_args()
    torch.set_num_threads(args.threads)
    several = len(args.seeds) > 1
    robust_keys = [robust_prefix(epsilon) for epsilon in args.robust_epsilons]
    summaries: dict[int, dict[str, Any]] = {}
    for seed in args.seeds:
        out = seed_path(args.out, seed, several)
        if args.summary_only:
            summaries[seed] = json.loads(out.read_text())
            continue
        summary, task = run_seed(args, seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=1))
        torch.save(task.state_dict(), out.with_suffix(".pt"))  # the trained network, for measurements after the run
        summaries[seed] = summary
        print(f"\nseed {seed}:")
        print_table(summary["history"], robust_keys)
        print(json.dumps({k: v for k, v in summary.items() if k not in ("history", "settings")}))
        print(f"json: {out}", flush=True)
    first = summaries[args.seeds[0]]
    title = title_of(first["settings"], first["steps_done"], first["wall_s"])
    draw(first["history"], robust_keys, title, args.figure)
    if ip_layers(first["history"]):
        draw_plane(first["history"], f"digits grokking run, seed {args.seeds[0]}, training probe", args.plane_figure)
        print(f"information plane: {args.plane_figure}")
    robust_key = robust_keys[-1] if robust_keys else None
    print_phases({seed: phases(s["history"], robust_keys) for seed, s in summaries.items()})
    if several:
        draw_seeds({seed: s["history"] for seed, s in summaries.items()}, robust_key, title, args.seeds_figure)
        print(f"figures: {args.figure}  {args.seeds_figure}")
    else:
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
