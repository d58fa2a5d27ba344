"""Learning-rate schedule: linear warmup, cosine decay, cooldown at the minimum (timm's epoch semantics).

The rate is computed per optimizer step, so warmup and decay are smooth within an epoch:

    epochs:  [0, warmup)            warmup_lr -> lr, linear
             [warmup, epochs - cooldown)   lr -> min_lr, half cosine   ("constant": lr throughout)
             [epochs - cooldown, ...)      min_lr                       ("constant": lr)

`epochs` counts every epoch, warmup and cooldown included.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from .recipe import SCHEDULES, TrainConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScheduleShape:
    """The schedule as a pure function of the step: see the module docstring."""

    steps_per_epoch: int
    epochs: int
    lr: float
    min_lr: float
    warmup_epochs: float
    warmup_lr: float
    cooldown_epochs: float
    sched: str = "cosine"

    def __post_init__(self) -> None:
        if self.sched not in SCHEDULES:
            raise ValueError(f"sched must be one of {', '.join(SCHEDULES)}, got {self.sched!r}")
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.warmup_epochs < 0 or self.cooldown_epochs < 0:
            raise ValueError(f"warmup_epochs and cooldown_epochs must be >= 0, got {self.warmup_epochs} and "
                             f"{self.cooldown_epochs}")  # fmt: skip
        if self.warmup_epochs + self.cooldown_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) + cooldown_epochs ({self.cooldown_epochs}) "
                             f"must be <= epochs ({self.epochs})")  # fmt: skip

    @classmethod
    def from_config(cls, config: TrainConfig, *, steps_per_epoch: int) -> ScheduleShape:
        """The schedule of a TrainConfig, peaking at `config.scaled_lr`."""
        return cls(steps_per_epoch=steps_per_epoch, epochs=config.epochs, lr=config.scaled_lr, min_lr=config.min_lr,
                   warmup_epochs=config.warmup_epochs, warmup_lr=config.warmup_lr,
                   cooldown_epochs=config.cooldown_epochs, sched=config.sched)  # fmt: skip

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step `step` (0-based); steps past the end get the final rate."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return self.lr_at_progress(step / self.total_steps)

    def lr_at_progress(self, progress: float) -> float:
        """Learning rate at ``progress`` (0 = the first step, 1 = the end) of the schedule."""
        t = progress * self.epochs  # position in epochs
        if t < self.warmup_epochs:
            return self.warmup_lr + (self.lr - self.warmup_lr) * t / self.warmup_epochs
        if self.sched == "constant":
            return self.lr
        decay_epochs = self.epochs - self.warmup_epochs - self.cooldown_epochs
        if t >= self.warmup_epochs + decay_epochs:
            return self.min_lr
        progress = (t - self.warmup_epochs) / decay_epochs
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Retarget:
    """From step ``step`` (at schedule progress ``progress``) the rest of the schedule spans ``total_steps``
    steps in all: progress then grows linearly to 1 at ``total_steps``, so the rate never jumps."""

    step: int = 0
    progress: float = 0.0
    total_steps: int | None = None  # None: the shape's own

    def progress_at(self, step: int, shape_total: int) -> float:
        total = self.total_steps if self.total_steps is not None else shape_total
        if step <= self.step:  # before the anchor (not reached by a running schedule)
            return self.progress * step / max(self.step, 1)
        return self.progress + (1.0 - self.progress) * (step - self.step) / max(total - self.step, 1)


class LRSchedule:
    """Sets `param_group['lr']` of an optimizer from a `ScheduleShape`; call `step(i)` before optimizer step i.

    Construction already sets the rate of step 0. The rate is a pure function of the step and of the last
    `retarget` (a time budget re-planning the run's length while it trains: the rest of the schedule is
    stretched or squeezed from the current rate, without a jump); `state_dict` holds both, so a resumed run
    continues exactly. `load_state_dict` keeps this object's shape (a resumed run may change e.g. the epochs).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, shape: ScheduleShape) -> None:
        self.optimizer = optimizer
        self.shape = shape
        self.anchor = Retarget()
        self.last_step = -1
        self.last_lr = float("nan")
        self.step(0)

    def retarget(self, total_steps: int, at_step: int, progress: float | None = None) -> None:
        """From ``at_step`` on, finish the schedule at ``total_steps`` steps (warmup, decay and cooldown keep
        their shares of the whole run); nothing changes for the steps already taken. ``progress``: where the
        schedule stands at ``at_step`` (a time budget: the share of its training time used), if further on than
        the steps so far say; progress never goes back, so the rate never rises again in the decay."""
        reached = self.anchor.progress_at(at_step, self.shape.total_steps)
        progress = min(max(reached, progress if progress is not None else 0.0), 1.0)
        self.anchor = Retarget(step=at_step, progress=progress, total_steps=max(total_steps, at_step + 1))

    @classmethod
    def from_config(cls, optimizer: torch.optim.Optimizer, config: TrainConfig, *, steps_per_epoch: int) -> LRSchedule:
        """The schedule of a TrainConfig, peaking at `config.scaled_lr`."""
        return cls(optimizer, ScheduleShape.from_config(config, steps_per_epoch=steps_per_epoch))

    @property
    def total_steps(self) -> int:
        return self.shape.total_steps

    def progress_at(self, step: int) -> float:
        """Where the schedule stands at step ``step``: 0 at the start, 1 at the end."""
        return self.anchor.progress_at(step, self.shape.total_steps)

    def lr_at(self, step: int) -> float:
        """The rate of step `step` under this schedule (changes nothing)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return self.shape.lr_at_progress(self.progress_at(step))

    def step(self, step_index: int | None = None) -> float:
        """Set every param group's rate to that of `step_index` (default: the step after the last); return it."""
        step_index = self.last_step + 1 if step_index is None else step_index
        rate = self.lr_at(step_index)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        self.last_step = step_index
        self.last_lr = rate
        return rate

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "anchor": dataclasses.asdict(self.anchor), **dataclasses.asdict(self.shape)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "last_step" not in state:
            raise ValueError(f"not an LRSchedule state: expected a 'last_step' key, got keys {sorted(state)}")
        shape = dataclasses.asdict(self.shape)
        self.anchor = Retarget(**state.get("anchor", {}))
        if self.anchor.total_steps is not None:  # re-planned by a time budget: the saved shape is the run's
            self.shape = ScheduleShape(**{k: state[k] for k in shape})
        else:
            changed = {k: (v, shape[k]) for k, v in state.items() if k in shape and shape[k] != v}
            if changed:
                logger.info("schedule differs from the saved one (saved, now): %s", changed)
        self.step(int(state["last_step"]))
