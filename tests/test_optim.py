import math

import pytest
import torch

from lightning_regs.tasks import WarmupSchedule, build_optimizer


def test_step_schedule_decays_at_the_milestone_epochs():
    schedule = WarmupSchedule("step", total_steps=3000, steps_per_epoch=10, milestones=[150, 225], gamma=0.1)
    assert schedule(1499) == 1.0
    assert schedule(1500) == pytest.approx(0.1)
    assert schedule(2249) == pytest.approx(0.1)
    assert schedule(2250) == pytest.approx(0.01)


def test_linear_warmup_then_cosine_closed_form():
    total, per_epoch, warmup = 1000, 10, 5
    schedule = WarmupSchedule("cosine", total_steps=total, steps_per_epoch=per_epoch, warmup_epochs=warmup)
    assert schedule(0) == pytest.approx(1 / 50)
    assert schedule(24) == pytest.approx(25 / 50)
    for step in (50, 300, 700, 999):
        expected = 0.5 * (1 + math.cos(math.pi * (step - 50) / 950))
        assert schedule(step) == pytest.approx(expected)


def test_cosine_floor():
    schedule = WarmupSchedule("cosine", total_steps=100, steps_per_epoch=10, min_lr_ratio=0.1)
    assert schedule(0) == pytest.approx(1.0)
    assert schedule(100) == pytest.approx(0.1)


def test_schedule_survives_lambdalr_state_round_trip():
    params = [torch.nn.Parameter(torch.zeros(1))]
    make = lambda: torch.optim.lr_scheduler.LambdaLR(  # noqa: E731
        torch.optim.SGD(params, lr=1.0), WarmupSchedule("step", 100, 10, milestones=[3])
    )
    state = make().state_dict()
    torch.save(state, buffer := __import__("io").BytesIO())
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["lr_lambdas"][0]["milestones"] == [3]


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown scheduler"):
        WarmupSchedule("poly", total_steps=10, steps_per_epoch=1)
    with pytest.raises(ValueError, match="Unknown optimizer"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], "lamb", lr=0.1, weight_decay=0.0)


def test_adamw_and_plain_sgd():
    params = [torch.nn.Parameter(torch.zeros(1))]
    assert isinstance(build_optimizer(params, "adamw", lr=1e-3, weight_decay=0.01), torch.optim.AdamW)
    sgd = build_optimizer(params, "sgd", lr=0.1, weight_decay=0.0, momentum=0.0, nesterov=True)
    assert sgd.defaults["nesterov"] is False
