"""How far the default LC count is from the official MLP script's count, on random 16-32-32-10 MLPs.

Default: inputs of the ReLUs, the centre among the vertices. ``preset="official_mlp"``: outputs of every
``nn.Linear`` (logits included), no centre. 256 Gaussian points, P = 8 directions, r = 0.5, five seeds.

    python benchmarks/local_complexity_official_mlp.py
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_regs.functional.local_complexity import local_complexity, orthonormal_directions


def main() -> None:
    print(f"{'seed':>4}{'default':>10}{'official_mlp':>14}{'default below official':>24}")
    for seed in range(5):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
        points = torch.randn(256, 16)
        directions = orthonormal_directions((16,), 8, torch.Generator().manual_seed(seed))
        default = local_complexity(net, points, 0.5, directions=directions).counts.sum(1).double().mean().item()
        linear = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
        official = local_complexity(net, points, 0.5, directions=directions, layers=linear, include_center=False)
        official_mean = official.counts.sum(1).double().mean().item()
        print(f"{seed:>4}{default:>10.3f}{official_mean:>14.3f}{(official_mean - default) / official_mean:>23.1%}")


if __name__ == "__main__":
    main()
