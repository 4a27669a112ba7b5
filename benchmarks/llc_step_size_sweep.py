"""Which SGLD step size and localisation let the LLC's chains settle, at the weights a grokking run ended with?

    python benchmarks/grokking_lc_digits.py --steps 20000 --weight-decay 0.3 ... --seeds 0   # saves the task (.pt)
    python benchmarks/llc_step_size_sweep.py --task runs/grokking_dynamics_seed0.pt

Loads the trained task of ``benchmarks/grokking_lc_digits.py`` (its settings must match ``--width``/``--depth``/...)
and runs :func:`~lightning_regs.functional.estimate_llc` on its MSE loss over the training digits (nβ = n/log n, 4
chains, minibatches of 100) for every (ε, γ, burn-in, draws) of the grid. Prints λ̂ ± the spread over chains, the
chains' mean trace rise (residual standard deviations over the second half of the draws; > 4 flags a chain), the
flagged chains and the seconds. A setting has settled when its chains are not flagged and λ̂ does not move with ε at
a fixed γ (the localisation alone relaxes in about 2 / (ε·γ) steps).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from grokking_lc_digits import build_data, build_task
from torch.func import functional_call

from lightning_regs.functional.llc import default_n_beta, estimate_llc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", type=Path, default=Path("runs/grokking_dynamics_seed0.pt"))
    parser.add_argument("--seed", type=int, default=0, help="the run's seed (its train / held-out split)")
    parser.add_argument("--width", type=int, default=200)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--init-scale", type=float, default=8.0)
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--steps", type=float, nargs="+", default=[1e-6, 1e-5, 3e-5, 1e-4])
    parser.add_argument("--localizations", type=float, nargs="+", default=[100.0, 1000.0, 3000.0])
    parser.add_argument("--lengths", nargs="+", default=["0:200", "200:200"], help="burn-in:draws pairs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = argparse.Namespace(**vars(args), lr=1e-3, weight_decay=0.0, batch_size=200)
    task = build_task(settings)
    task.load_state_dict(torch.load(args.task, weights_only=True))
    task.eval()
    data = build_data(settings, args.seed)
    data.setup("fit")
    images, targets = data.datasets["train"].images, data.datasets["train"].targets

    def loss_fn(params: dict[str, torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(functional_call(task, params, (x,)), F.one_hot(y, 10).to(x.dtype))

    n_beta = default_n_beta(len(targets))
    params = dict(task.named_parameters())
    print(f"{args.task}: d = {sum(p.numel() for p in params.values())}, nβ = {n_beta:.1f}, 4 chains of 100 points")
    print(f"{'eps':>7} {'gamma':>6} {'burn':>5} {'draws':>5} {'llc':>9} {'± std':>7} {'rise':>6} {'flag':>4} {'s':>5}")
    for eps, gamma, length in itertools.product(args.steps, args.localizations, args.lengths):
        burnin, draws = (int(part) for part in length.split(":"))
        order = torch.Generator().manual_seed(0)
        batches = []
        for _ in range(burnin + draws):
            index = torch.randperm(len(targets), generator=order)[:100]
            batches.append((images[index], targets[index]))
        started = time.perf_counter()
        estimate = estimate_llc(
            loss_fn, params, batches, num_chains=4, num_draws=draws, num_burnin=burnin, step_size=eps,
            n_beta=n_beta, localization=gamma, generator=torch.Generator().manual_seed(1),
        )  # fmt: skip
        rise = estimate.trace_rise[torch.isfinite(estimate.trace_rise)]
        print(
            f"{eps:>7.0e} {gamma:>6.0f} {burnin:>5} {draws:>5} {estimate.llc:>9.4g} {estimate.llc_std:>7.3g} "
            f"{float(rise.mean()) if rise.numel() else float('nan'):>6.1f} {int(estimate.diverged.sum()):>4} "
            f"{time.perf_counter() - started:>5.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
