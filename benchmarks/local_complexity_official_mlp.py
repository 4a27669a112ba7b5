"""How far the default LC count is from the official scripts' counts, on random 16-32-32-10 MLPs.

Default: inputs of the ReLUs, the centre among the vertices. ``preset="official"`` (the ResNet script): the same
layers, no centre. ``preset="official_mlp"``: outputs of every ``nn.Linear`` (logits included), no centre.
256 Gaussian points, P = 8 directions, r = 0.5 and 2.0, five seeds.

    python benchmarks/local_complexity_official_mlp.py
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_regs.functional.local_complexity import local_complexity, orthonormal_directions


def main() -> None:
    header = f"{'seed':>4}{'r':>5}{'default':>10}{'official':>10}{'centre adds':>13}{'official_mlp':>14}"
    print(f"{header}{'default below':>15}")
    for seed in range(5):
        for radius in (0.5, 2.0):
            torch.manual_seed(seed)
            net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
            points = torch.randn(256, 16)
            directions = orthonormal_directions((16,), 8, torch.Generator().manual_seed(seed))
            default = _mean(local_complexity(net, points, radius, directions=directions))
            official = _mean(local_complexity(net, points, radius, directions=directions, include_center=False))
            linear = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
            mlp = _mean(
                local_complexity(net, points, radius, directions=directions, layers=linear, include_center=False)
            )
            print(
                f"{seed:>4}{radius:>5}{default:>10.3f}{official:>10.3f}{(default - official) / official:>13.2%}"
                f"{mlp:>14.3f}{(mlp - default) / mlp:>15.1%}"
            )


def _mean(result: Any) -> float:
    return result.counts.sum(1).double().mean().item()


if __name__ == "__main__":
    main()
