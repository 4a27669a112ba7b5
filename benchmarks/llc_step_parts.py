"""What one SGLD chain step of the LLC monitor costs on torchvision's resnet18, by part, beside a training step.

    python benchmarks/llc_step_parts.py

Times (mean of 10, after one warm-up, 2 threads, digits-sized 3×32×32 inputs): the gradient of the monitor's default
18-point minibatch through ``torch.func.functional_call``; the parameter work of a step (a normal draw and the
element-wise updates over every parameter, as :func:`~lightning_regs.functional.estimate_llc` does); and a training
step of 64 (SGD). The monitor's plan counts the gradient as 3 forwards a point and not the parameter work.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call
from torchvision.models import resnet18


def mean_seconds(fn: Callable[[], object], repeats: int = 10) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    torch.set_num_threads(2)
    model = resnet18(num_classes=10).eval()
    params = {name: p.detach().clone().requires_grad_(True) for name, p in model.named_parameters()}
    centre = {name: p.detach().clone() for name, p in params.items()}
    inputs, targets = torch.randn(18, 3, 32, 32), torch.randint(10, (18,))
    noise = torch.Generator().manual_seed(0)

    def gradient() -> tuple[torch.Tensor, ...]:
        loss = F.cross_entropy(functional_call(model, params, (inputs,)), targets)
        return torch.autograd.grad(loss, list(params.values()))

    grads = gradient()

    def parameter_work() -> None:
        with torch.no_grad():
            for (name, weight), grad in zip(params.items(), grads, strict=True):
                drift = weight - centre[name]
                weight.sub_(grad, alpha=1e-6).sub_(drift, alpha=1e-6)
                weight.add_(torch.randn(weight.shape, generator=noise), alpha=1e-3)

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batch, labels = torch.randn(64, 3, 32, 32), torch.randint(10, (64,))

    def training_step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(model(batch), labels).backward()
        optimizer.step()

    step = mean_seconds(training_step)
    print(f"resnet18, {sum(p.numel() for p in params.values()) / 1e6:.1f} M parameters, 2 threads")
    print(f"  training step of 64:          {step * 1e3:6.1f} ms ({step / 192 * 1e3:.2f} ms a point-forward)")
    print(f"  chain step, gradient of 18:   {mean_seconds(gradient) * 1e3:6.1f} ms (counted: 54 point-forwards)")
    print(f"  chain step, parameter work:   {mean_seconds(parameter_work) * 1e3:6.1f} ms (not counted)")


if __name__ == "__main__":
    main()
