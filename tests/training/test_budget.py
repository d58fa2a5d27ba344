"""Time budgets that adapt: the plan is fitted again after every epoch from the median speed of the last
few, and the learning-rate schedule follows each new plan from its current rate (no jump, cooldown kept).

The loop-level tests run on a fake clock advanced by the training step, so that "an epoch slowed by a busy
machine" is exact and the tests do not depend on this machine's load."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from compact_transformers.cli import main
from compact_transformers.training import budget as budget_module
from compact_transformers.training import loop as loop_module
from compact_transformers.training.budget import EpochEstimate, TimeBudget
from compact_transformers.training.recipe import ConfigSource, TrainConfig
from compact_transformers.training.schedule import LRSchedule, ScheduleShape


def schedule(epochs: int = 10, steps: int = 10) -> LRSchedule:
    shape = ScheduleShape(steps_per_epoch=steps, epochs=epochs, lr=1e-3, min_lr=1e-5, warmup_epochs=1,
                          warmup_lr=1e-6, cooldown_epochs=2)
    return LRSchedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), shape)


@pytest.mark.parametrize("new_epochs", [4, 25])
def test_retarget_is_continuous_monotone_and_ends_with_the_cooldown(new_epochs: int) -> None:
    sched = schedule()
    before = [sched.lr_at(step) for step in range(31)]
    sched.retarget(new_epochs * 10, at_step=30)
    assert [sched.lr_at(step) for step in range(31)] == pytest.approx(before, rel=1e-12)  # steps taken: untouched
    rates = [sched.lr_at(step) for step in range(30, new_epochs * 10 + 5)]
    assert rates[0] == pytest.approx(before[30])
    assert all(b <= a + 1e-15 for a, b in zip(rates, rates[1:]))  # decays monotonically after warmup
    jumps = [abs(b - a) for a, b in zip(rates, rates[1:])]
    assert max(jumps) < 0.2 * 1e-3  # no jump: each step moves the rate by a small fraction of the peak
    total = new_epochs * 10
    # the cooldown is the schedule's last 20% (2 of 10 epochs): of the rest, from progress 0.3 at step 30
    cooldown_start = 30 + (0.8 - 0.3) / (1 - 0.3) * (total - 30)
    assert sched.lr_at(int(cooldown_start) + 1) == pytest.approx(1e-5)
    assert sched.lr_at(int(cooldown_start) - 5) > 1e-5 * 1.01
    assert sched.lr_at(total - 1) == pytest.approx(1e-5)


def test_retargeted_schedule_resumes_exactly_even_with_another_shape() -> None:
    sched = schedule()
    sched.step(30)
    sched.retarget(70, at_step=30)
    sched.step(41)
    state = sched.state_dict()
    resumed = schedule(epochs=7)  # a resumed run builds its schedule from the re-planned config
    resumed.load_state_dict(state)
    assert [resumed.lr_at(s) for s in range(41, 80)] == [sched.lr_at(s) for s in range(41, 80)]
    assert resumed.last_lr == sched.last_lr


def test_replan_uses_the_fastest_recent_epoch_or_the_probe() -> None:
    config = TrainConfig(epochs=40, eval_interval=1)
    budget = TimeBudget(minutes=10, start=0.0)
    budget.max_epochs = 60
    fake = {"now": 0.0}
    budget.elapsed = lambda: fake["now"]  # type: ignore[method-assign]
    fake["now"] = 100.0  # a first epoch slowed to 100 s by another process
    alone = budget.replan(config, 100.0, epochs_done=1)
    # epochs of which half or more fits count (budget.LAST_EPOCH_SHARE): round, not floor
    assert alone is not None and alone["epochs"] == 1 + round((588 - 100) / 100)  # no better estimate yet
    budget.recent, budget.probe_seconds = [], 10.0  # the probe steps said 10 s per epoch
    with_probe = budget.replan(config, 100.0, epochs_done=1)
    assert with_probe is not None and with_probe["epochs"] == 1 + round((588 - 100) / 10)
    fake["now"] = 110.0
    faster = budget.replan(config.replace(**with_probe), 8.0, epochs_done=2)  # a faster phase: more epochs
    assert faster is not None and faster["epochs"] == min(60, 2 + round((588 - 110) / 8))


class FakeClock:
    """time.monotonic / time.perf_counter for the loop and the budget, advanced only by training steps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_on_a_fake_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: float, minutes: float = 1.0,
                        samples_per_class: int = 5, validations: list[float] | None = None) -> list[dict]:
    """`cct train --time-limit minutes` on digits with 0.5 s steps on a fake clock (those of the first epoch
    take ``slow`` s; evaluations take none, or the seconds of ``validations`` in turn, the last one for the
    rest); the run's epoch records."""
    clock = FakeClock()
    fake_time = SimpleNamespace(monotonic=clock, perf_counter=clock, time=clock)
    steps_per_epoch = {}
    real_step = loop_module.train_step

    def timed_step(model, batch, tools, step):  # noqa: ANN001, ANN202
        out = real_step(model, batch, tools, step)
        steps = steps_per_epoch.setdefault("n", tools.schedule.shape.steps_per_epoch)
        clock.now += slow if step < steps else 0.5  # the first epoch's steps take `slow` seconds each
        return out

    from compact_transformers import cli

    monkeypatch.setattr(loop_module, "time", fake_time)
    monkeypatch.setattr(budget_module, "time", fake_time)
    monkeypatch.setattr(cli, "time", fake_time)
    monkeypatch.setattr(loop_module, "train_step", timed_step)
    if validations:
        real_evaluate, durations = loop_module.evaluate_split, iter(validations)

        def timed_evaluation(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            clock.now += next(durations, validations[-1])
            return real_evaluate(*args, **kwargs)

        monkeypatch.setattr(loop_module, "evaluate_split", timed_evaluation)
    monkeypatch.setattr(budget_module, "train_step", lambda model, batch, tools, step: clock.__setattr__(
        "now", clock.now + 0.5))  # the probe: 0.5 s steps
    assert main(["train", "--samples-per-class", str(samples_per_class), "--batch-size", "16", "--quiet",
                 "--device", "cpu", "--time-limit", str(minutes), "--eval-interval", "1", "--output", str(tmp_path),
                 "--name", "run"]) == 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
def test_a_slow_first_epoch_neither_wastes_the_budget_nor_cuts_the_cooldown(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    steady = run_on_a_fake_clock(tmp_path / "steady", monkeypatch, slow=0.5)
    monkeypatch.undo()
    slowed = run_on_a_fake_clock(tmp_path / "slowed", monkeypatch, slow=5.0)
    min_lr = TrainConfig().min_lr
    assert len(steady) >= 10
    # the slow epoch cost (5 - 0.5) s per step: the epochs that time would have held, and not more
    steps = round(steady[0]["epoch_seconds"] / 0.5)
    lost = math.ceil(steps * 4.5 / (steady[1]["epoch_seconds"] + 1e-9))
    assert len(slowed) >= len(steady) - lost - 1, (len(slowed), len(steady), lost)  # one fixed plan gave ~5
    for history in (steady, slowed):
        peak = max(r["lr"] for r in history)
        at_min = [r["epoch"] for r in history if r["lr"] <= min_lr + 0.01 * (peak - min_lr)]
        assert history[-1]["epoch"] in at_min  # the schedule ended in its cooldown ...
        assert len(at_min) <= 0.3 * len(history) + 1, at_min  # ... and did not sit at the minimum for long


def test_a_faster_later_validation_gives_back_the_time_kept_for_the_final_one() -> None:
    config = TrainConfig(epochs=40, eval_interval=1)
    budget = TimeBudget(minutes=10, start=0.0)
    budget.max_epochs = 60
    budget.elapsed = lambda: 50.0  # type: ignore[method-assign]
    # the first validation took 30 s (say, compiling the model for evaluation); the test split is half its size
    budget.refit(config, EpochEstimate(train_seconds=10.0, eval_seconds=30.0), test_share=0.5)
    assert budget.reserve == pytest.approx(30 * 1.5 + budget_module.FINISH_SECONDS)
    stuck = budget.replan(config, 10.0, epochs_done=2)
    budget.observe_validation(1.0)  # a later one: 1 s
    assert budget.reserve == pytest.approx(1 * 1.5 + budget_module.FINISH_SECONDS) and budget.eval_seconds == 1.0
    budget.observe_validation(3.0)  # a slower one later changes nothing: the first fast one is the speed
    assert budget.reserve == pytest.approx(1 * 1.5 + budget_module.FINISH_SECONDS) and budget.eval_seconds == 1.0
    budget.recent = []
    freed = budget.replan(config, 10.0, epochs_done=2)
    assert stuck is not None and freed is not None
    # 588 s to fill: 50 s used, 46.5 s kept, 10 + 30 s per epoch before; 1.5 s kept, 10 + 1 s per epoch after
    assert (stuck["epochs"], freed["epochs"]) == (2 + round((588 - 50 - 46.5) / 40), 2 + round((588 - 50 - 6.5) / 11))
    restored = TimeBudget(minutes=10, start=0.0)
    restored.load_state_dict(budget.state_dict())
    assert (restored.reserve, restored.eval_seconds, restored.test_share) == (budget.reserve, 1.0, 0.5)


@pytest.mark.slow
def test_a_slow_first_validation_does_not_shrink_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first validation slowed by one-off costs (as compiling the model for evaluation does) costs the run
    the time it took, not the epochs that a plan counting that time for every validation would drop."""
    steady = run_on_a_fake_clock(tmp_path / "steady", monkeypatch, slow=0.5, validations=[0.5])
    monkeypatch.undo()
    slowed = run_on_a_fake_clock(tmp_path / "slowed", monkeypatch, slow=0.5, validations=[20.0, 0.5])
    epoch_seconds = steady[1]["epoch_seconds"] + 0.5  # training steps and a validation
    lost = math.ceil(19.5 / epoch_seconds)  # the epochs that the 19.5 s lost once would have held
    assert len(steady) >= 15
    assert len(slowed) >= len(steady) - lost - 1, (len(slowed), len(steady), lost)


@pytest.mark.slow
@pytest.mark.parametrize("minutes", [0.75, 0.8, 0.85])
def test_the_budget_is_used_to_within_half_an_epoch_and_the_schedule_ends_at_its_minimum(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, minutes: float) -> None:
    # 0.5 s steps on a fake clock (validation takes none of it), 10 probe steps: what the steps may fill is the
    # budget's FILL share less the probe and the seconds kept for finishing
    with caplog.at_level("INFO", logger="compact_transformers.training.loop"):
        history = run_on_a_fake_clock(tmp_path, monkeypatch, slow=0.5, minutes=minutes, samples_per_class=20)
    full = history[0]["epoch_seconds"]
    steps_per_epoch = round(full / 0.5)
    assert steps_per_epoch >= 6 and all(r["epoch_seconds"] == full for r in history[:-1])
    fillable = budget_module.FILL * minutes * 60 - 10 * 0.5 - budget_module.FINISH_SECONDS
    used = sum(r["epoch_seconds"] for r in history)
    assert fillable - 0.5 * full - 0.5 <= used <= fillable + 0.5, (used, fillable, full)
    last_steps = round(history[-1]["epoch_seconds"] / 0.5)
    assert last_steps >= steps_per_epoch / 2  # a last epoch of which less than half fitted is not planned
    if last_steps < steps_per_epoch:
        assert "the last epoch, planned to fit, ran" in caplog.text
        assert "reached during epoch" not in caplog.text
    # the schedule ended with the steps run: its last rate is at its minimum (a last epoch cut by the clock
    # half-way through a schedule planned for a whole one would end at ~1% of the peak)
    peak, min_lr = max(r["lr"] for r in history), TrainConfig().min_lr
    assert history[-1]["lr"] <= min_lr + 0.005 * (peak - min_lr), (history[-1]["lr"], peak)


def test_a_budget_that_fits_many_epochs_of_the_small_model_plans_the_larger_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan probes the recipe's model; when enough epochs of it fit (GROW_AT_IMAGES: 50 of 60,000 images),
    it probes the larger model and plans that model's epochs instead. A model the user chose is kept."""
    seconds_per_epoch = {"cct_2_3x2_32": 10.0, "cct_4_3x2_32": 15.0}
    probed = []

    def fake_estimate(config: TrainConfig, data: object) -> EpochEstimate:
        probed.append(config.model)
        return EpochEstimate(train_seconds=seconds_per_epoch[config.model], eval_seconds=0.0)

    monkeypatch.setattr(budget_module, "estimate_epoch_seconds", fake_estimate)
    fashion = {"dataset": "fashion_mnist"}
    data = SimpleNamespace(train=SimpleNamespace(labels=torch.zeros(60_000)))
    # 10 minutes: 59 epochs of the small model fit (98% of the budget), so the larger one is planned: 39
    long = TimeBudget(10.0).plan(ConfigSource("small", from_cli={**fashion, "time_limit": 10.0}), data=data)
    assert probed == ["cct_2_3x2_32", "cct_4_3x2_32"]
    assert long.model == "cct_4_3x2_32" and long.epochs == 39
    assert long == ConfigSource("small", from_cli={**fashion, "time_limit": 10.0}).with_model(
        "cct_4_3x2_32").resolve(epochs=39, eval_interval=long.eval_interval)
    probed.clear()
    short = TimeBudget(5.0).plan(ConfigSource("small", from_cli={**fashion, "time_limit": 5.0}), data=data)
    assert probed == ["cct_2_3x2_32"] and (short.model, short.epochs) == ("cct_2_3x2_32", 29)
    probed.clear()
    chosen = ConfigSource("small", from_cli={**fashion, "time_limit": 10.0, "model": "cct_2_3x2_32"})
    kept = TimeBudget(10.0).plan(chosen, data=data)
    assert probed == ["cct_2_3x2_32"] and (kept.model, kept.epochs) == ("cct_2_3x2_32", 59)


def test_a_short_plan_counts_the_validation_views_it_will_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe runs the recipe's default (100 epochs: shifted views on, 6 views), but a run planned for
    fewer than the shifts' epochs validates on 2 (image and mirror): its validation interval is planned from
    2 views, so it validates as often as their cost allows, not a third as often."""
    train_seconds, seconds_per_view = 10.0, 0.2

    def fake_estimate(config: TrainConfig, data: object) -> EpochEstimate:
        views = budget_module.tta_view_count(config.uses_flip_tta, config.uses_shift_tta)
        return EpochEstimate(train_seconds=train_seconds, eval_seconds=views * seconds_per_view)

    monkeypatch.setattr(budget_module, "estimate_epoch_seconds", fake_estimate)
    data = SimpleNamespace(train=SimpleNamespace(labels=torch.zeros(1_000)))
    source = ConfigSource("small", from_cli={"dataset": "fashion_mnist", "time_limit": 2.0})
    assert source.resolve().uses_shift_tta and budget_module.tta_view_count(True, 1) == 6
    planned = TimeBudget(2.0).plan(source, data=data)
    assert planned.epochs < 20 and not planned.uses_shift_tta and planned.uses_flip_tta
    two_views = EpochEstimate(train_seconds, 2 * seconds_per_view)
    assert planned.eval_interval == budget_module.plan_eval_interval(two_views) == 1
    assert budget_module.plan_eval_interval(EpochEstimate(train_seconds, 6 * seconds_per_view)) == 3
