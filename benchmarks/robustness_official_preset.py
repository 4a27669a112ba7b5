"""How much the official PGD preset changes the measured robustness of the grokking MLPs on digits.

    OMP_NUM_THREADS=1 python benchmarks/grokking_lc_digits.py --steps 40000 --weight-decay 0.3 --measurements 60 \\
        --seeds 0 1 2 3 4 --robust-epsilons 0.1 0.25        # trains and saves runs/grokking_lc_digits_seed<N>.pt
    OMP_NUM_THREADS=1 python benchmarks/robustness_official_preset.py --seeds 0 1 2 3 4

For each saved network, every held-out digit is attacked with PGD-linf (10 steps, the same random start) as
:class:`~lightning_regs.callbacks.robustness_monitor.AdversarialRobustnessMonitor` does under
``preset="library"`` (step epsilon/4, no clamp) and ``preset="official"`` (step epsilon*4/50, start and steps
clamped to the held-out points' range, as the official ``attacks.PGD``), and under the two changes one at a
time. Prints the robust accuracy of each and the largest difference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from grokking_lc_digits import build_data, build_task

from lightning_regs.callbacks.robustness_monitor import OFFICIAL_STEP_FRACTION
from lightning_regs.functional.adversarial import pgd_attack, predict, random_perturbation
from lightning_regs.tasks.grokking_classifier import GrokkingClassifier


def load_task(run: Path) -> tuple[GrokkingClassifier, argparse.Namespace]:
    """The trained task of one grokking run (its JSON settings, its saved state dict)."""
    settings = argparse.Namespace(**json.loads(run.with_suffix(".json").read_text())["settings"])
    task = build_task(settings)
    task.load_state_dict(torch.load(run.with_suffix(".pt"), weights_only=True))
    return task.eval(), settings


def heldout(settings: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out digits of the run (the split its ``seed`` drew)."""
    data = build_data(settings, settings.seed)
    data.setup("fit")
    return data.datasets["val"].images, data.datasets["val"].targets


def robust_accuracy(task, images, targets, epsilon: float, step: float, clamp: bool, start: torch.Tensor) -> float:
    input_range = (float(images.min()), float(images.max())) if clamp else None
    adversarial = pgd_attack(task, images, targets, epsilon, step, 10, "linf", input_range=input_range, start=start)
    return float(predict(task, adversarial).eq(targets).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    parser.add_argument("--runs", type=Path, default=Path("runs/grokking_lc_digits.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants = {
        "library": (0.25, False),
        "official step": (OFFICIAL_STEP_FRACTION, False),
        "official clamp": (0.25, True),
        "official": (OFFICIAL_STEP_FRACTION, True),
    }
    print(f"{'seed':>4} {'eps':>5} {'clean':>6}" + "".join(f"{name:>15}" for name in variants))
    differences = []
    for seed in args.seeds:
        task, settings = load_task(args.runs.with_name(f"{args.runs.stem}_seed{seed}{args.runs.suffix}"))
        images, targets = heldout(settings)
        clean = float(predict(task, images).eq(targets).float().mean())
        for epsilon in args.epsilons:
            start = random_perturbation(images, epsilon, "linf", torch.Generator().manual_seed(seed))
            values = {
                name: robust_accuracy(task, images, targets, epsilon, epsilon * fraction, clamp, start)
                for name, (fraction, clamp) in variants.items()
            }
            differences.append(values["official"] - values["library"])
            print(f"{seed:>4} {epsilon:>5g} {clean:>6.3f}" + "".join(f"{v:>15.3f}" for v in values.values()))
    print(f"official - library: mean {sum(differences) / len(differences):+.3f}, "
          f"largest {max(differences, key=abs):+.3f} (robust accuracy)")  # fmt: skip


if __name__ == "__main__":
    main()
