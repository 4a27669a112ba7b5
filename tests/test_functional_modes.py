"""eval_mode: eval inside the block, every submodule's own training flag back afterwards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_regs.modes import eval_mode


def mixed() -> nn.Sequential:
    """A training network holding a frozen (eval) BatchNorm next to a training one."""
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
    net[1].eval()
    return net


def flags(net: nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in net.named_modules()}


def test_eval_inside_and_each_flag_restored_after():
    net = mixed()
    before = flags(net)
    assert before["1"] is False and before["2.1"] is True
    with eval_mode(net) as inside:
        assert inside is net
        assert not any(flags(net).values())
        out = net(torch.randn(3, 4))  # BN in eval: running statistics are used, not updated
    assert out.shape == (3, 4)
    assert flags(net) == before
    assert torch.equal(net[1].running_mean, torch.zeros(4)) and torch.equal(net[2][1].running_mean, torch.zeros(4))


def test_flags_are_restored_when_the_body_raises():
    net = mixed()
    before = flags(net)
    with pytest.raises(RuntimeError, match="boom"), eval_mode(net):
        raise RuntimeError("boom")
    assert flags(net) == before


def test_a_module_in_eval_mode_stays_in_eval_mode():
    net = mixed().eval()
    with eval_mode(net):
        pass
    assert not any(flags(net).values())
