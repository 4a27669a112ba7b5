"""Learning from aggregate responses: instance-level test error over ρ, bag level (ρ = 0) to instance level (ρ = 1).

    OMP_NUM_THREADS=1 python benchmarks/aggregate_response_rho.py              # 5 seeds, ρ ∈ {0, .25, .5, .75, 1}
    OMP_NUM_THREADS=1 python benchmarks/aggregate_response_rho.py --seeds 0 1 --epochs 50

Table 1, the regression toy (``AggregateRegressionDataModule`` defaults: n = 600, d = 20, random bags of k = 10,
noise 0.5): a linear model (with bias) trained by ``AggregateResponseTask`` (AdamW, lr 0.05, cosine, full epochs of
whole bags) for each ρ and seed, scored on 1,000 fresh instances: the test MSE against their noisy y (floor
noise² = 0.25), the excess risk ``‖θ̂ − θ‖² + b²`` of the trained weights, and the excess risk of the exact minimiser
of ``L_bag + ρ·R`` on the same data (normal equations, float64): the trained column must sit on it.

Table 2, the closed form alone (seconds), on a noisier regime with few bags (n = 250, so m = 25 bags for 21
parameters; noise 3.0), over a finer ρ grid: the regime where an interpolating ρ beats both ends.
Each seed draws θ, the data, the bags, the model's initialization and the order.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import torch
from lightning.pytorch import Trainer, seed_everything
from torch import nn

from lightning_regs.datamodules.aggregate_toys import AggregateRegressionDataModule
from lightning_regs.tasks.aggregate_response import AggregateResponseTask

RHOS = (0.0, 0.25, 0.5, 0.75, 1.0)
FINE_RHOS = (0.0, 0.01, 0.03, 0.1, 0.25, 0.5, 1.0)
QUIET = {
    "logger": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
    "num_sanity_val_steps": 0,
    "accelerator": "cpu",
    "devices": 1,
}


def interpolated_least_squares(x: torch.Tensor, bag_targets: torch.Tensor, bags: torch.Tensor, rho: float):
    """The exact minimiser ``(θ, b)`` of ``L_bag + ρ·R`` for a linear model with bias (uniform bag weights).

    ``L_bag = (1/m)·Σ_a (ȳ_a − x̄_aᵀθ − b)²`` and ``R = (1/n)·Σ_i ((x_i − x̄_a)ᵀθ)²``: normal equations
    ``(X̄ᵀX̄/m + ρ·X_cᵀX_c/n)·w = X̄ᵀȳ/m`` over ``w = (θ, b)``, in float64.
    """
    x = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    counts = torch.bincount(bags).double()
    present = counts > 0
    means = (
        torch.zeros(len(counts), x.shape[1], dtype=torch.float64).index_add(0, bags, x) / counts.clamp(min=1)[:, None]
    )
    responses = torch.zeros(len(counts), dtype=torch.float64).index_add(0, bags, bag_targets.double()) / counts.clamp(
        min=1
    )
    means, responses = means[present], responses[present]
    centred = x - torch.zeros_like(x).index_add(0, bags, x)[bags] / counts[bags][:, None]
    m, n = len(means), len(x)
    weights = torch.linalg.solve(means.T @ means / m + rho * centred.T @ centred / n, means.T @ responses / m)
    return weights[:-1], weights[-1]


def excess_risk(theta_hat: torch.Tensor, bias: torch.Tensor, theta: torch.Tensor) -> float:
    """``E[(xᵀθ̂ + b − xᵀθ)²]`` for ``x ~ N(0, I)``: ``‖θ̂ − θ‖² + b²``."""
    return float((theta_hat.double() - theta.double()).square().sum() + bias.double().square())


def toy_data(seed: int, **kwargs) -> AggregateRegressionDataModule:
    data = AggregateRegressionDataModule(seed=seed, **kwargs)
    data.setup("fit")
    return data


def closed_form(data: AggregateRegressionDataModule, rho: float) -> float:
    train = data.datasets["train"]
    theta_hat, bias = interpolated_least_squares(train.features, train.responses, train.bag_ids, rho)
    return excess_risk(theta_hat, bias, data.theta)


def trained(seed: int, rho: float, epochs: int) -> dict[str, float]:
    seed_everything(seed, verbose=False)
    data = AggregateRegressionDataModule(seed=seed, bags_per_batch=10)
    model = nn.Linear(data.hparams.num_features, 1)
    task = AggregateResponseTask(model, rho=rho, lr=0.05, scheduler="cosine")
    trainer = Trainer(max_epochs=epochs, limit_val_batches=0, **QUIET)
    start = time.perf_counter()
    trainer.fit(task, data)
    seconds = time.perf_counter() - start
    (metrics,) = trainer.test(task, data, verbose=False)
    risk = excess_risk(model.weight.detach().flatten(), model.bias.detach()[0], data.theta)
    return {"test_mse": metrics["test/mse"], "excess": risk, "closed": closed_form(data, rho), "seconds": seconds}


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def main() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*The number of training batches.*")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    total = time.perf_counter()
    rows = {rho: [trained(seed, rho, args.epochs) for seed in args.seeds] for rho in RHOS}
    print(f"\nTable 1: regression toy (n=600, d=20, k=10, noise 0.5), {len(args.seeds)} seeds, {args.epochs} epochs")
    print("| ρ | test MSE (trained) | excess risk (trained) | excess risk (closed form) | fit s |")
    print("|---|---|---|---|---|")
    for rho, results in rows.items():
        cells = [mean_std([r[key] for r in results]) for key in ("test_mse", "excess", "closed")]
        print(f"| {rho:g} | {' | '.join(cells)} | {statistics.mean(r['seconds'] for r in results):.1f} |")
    regime = {"num_samples": 250, "noise": 3.0}
    print(f"\nTable 2: closed form, n=250 (m=25 bags), d=20, k=10, noise 3.0, {len(args.seeds)} seeds")
    print("| ρ | excess risk (closed form) |")
    print("|---|---|")
    datasets = [toy_data(seed, **regime) for seed in args.seeds]
    for rho in FINE_RHOS:
        print(f"| {rho:g} | {mean_std([closed_form(data, rho) for data in datasets])} |")
    print(f"\ntotal {time.perf_counter() - total:.0f} s")


if __name__ == "__main__":
    main()
