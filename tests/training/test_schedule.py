from __future__ import annotations

import math

import pytest
import torch

from compact_transformers.training.recipe import TrainConfig
from compact_transformers.training.schedule import LRSchedule, ScheduleShape

SPE = 7  # steps per epoch
KW = dict(steps_per_epoch=SPE, epochs=30, lr=1e-3, min_lr=1e-5, warmup_epochs=4, warmup_lr=1e-6, cooldown_epochs=6)


def lr_at(step: int, **shape: object) -> float:
    return ScheduleShape(**shape).lr_at(step)


def rate(step: int, sched: str = "cosine") -> float:
    return lr_at(step, sched=sched, **KW)


def test_warmup_is_linear_from_warmup_lr_to_lr():
    assert rate(0) == pytest.approx(1e-6)
    assert rate(4 * SPE) == pytest.approx(1e-3)
    assert rate(2 * SPE) == pytest.approx((1e-6 + 1e-3) / 2)
    assert rate(1) == pytest.approx(1e-6 + (1e-3 - 1e-6) / (4 * SPE))  # per step, not per epoch


def test_cosine_midpoint_end_and_cooldown():
    decay_start, decay_epochs = 4, 30 - 4 - 6
    assert rate((decay_start + decay_epochs // 2) * SPE) == pytest.approx((1e-3 + 1e-5) / 2)
    assert 1e-5 < rate((decay_start + decay_epochs) * SPE - 1) < 1.05e-5  # last decay step, just above min_lr
    for step in range(24 * SPE, 30 * SPE + 5):
        assert rate(step) == 1e-5


def test_cosine_phase_is_monotone_decreasing():
    rates = [rate(s) for s in range(4 * SPE, 24 * SPE)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    expected = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 0.25))
    assert rate(9 * SPE) == pytest.approx(expected)


def test_constant_schedule_holds_lr_after_warmup():
    assert rate(0, "constant") == pytest.approx(1e-6)
    assert all(rate(s, "constant") == 1e-3 for s in (4 * SPE, 20 * SPE, 29 * SPE))


def test_no_warmup_starts_at_lr():
    assert lr_at(0, **{**KW, "warmup_epochs": 0}, sched="cosine") == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"sched": "step"}, "sched must be one of"),
        ({"warmup_epochs": 20, "cooldown_epochs": 20}, r"must be <= epochs \(30\)"),
        ({"steps_per_epoch": 0}, "steps_per_epoch must be >= 1"),
    ],
)
def test_bad_arguments(changes, message):
    with pytest.raises(ValueError, match=message):
        lr_at(0, **{**KW, "sched": "cosine", **changes})
    with pytest.raises(ValueError, match="step must be >= 0"):
        rate(-1)


def make_optimizer() -> torch.optim.Optimizer:
    model = torch.nn.Linear(2, 2)
    return torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias]}], lr=123.0)


def test_lr_schedule_sets_every_param_group():
    opt = make_optimizer()
    sched = LRSchedule(opt, ScheduleShape(sched="cosine", **KW))
    assert all(g["lr"] == pytest.approx(1e-6) for g in opt.param_groups)  # step 0 set on construction
    sched.step(4 * SPE)
    assert all(g["lr"] == pytest.approx(1e-3) for g in opt.param_groups)
    assert sched.step() == pytest.approx(rate(4 * SPE + 1)) and sched.last_step == 4 * SPE + 1


def test_lr_schedule_state_round_trip():
    sched = LRSchedule(make_optimizer(), ScheduleShape(sched="cosine", **KW))
    for _ in range(50):
        sched.step()
    state = sched.state_dict()
    opt2 = make_optimizer()
    sched2 = LRSchedule(opt2, ScheduleShape(sched="cosine", **KW))
    sched2.load_state_dict(state)
    assert sched2.last_step == 50 and opt2.param_groups[0]["lr"] == pytest.approx(rate(50))
    assert sched2.step() == pytest.approx(sched.step())
    with pytest.raises(ValueError, match="last_step"):
        sched2.load_state_dict({"epochs": 3})


def test_from_config_peaks_at_scaled_lr():
    config = TrainConfig(batch_size=256, epochs=20, warmup_epochs=2, cooldown_epochs=2)
    sched = LRSchedule.from_config(make_optimizer(), config, steps_per_epoch=5)
    assert sched.lr_at(2 * 5) == pytest.approx(config.scaled_lr) and sched.total_steps == 100
