"""Learning-rate schedule: linear warmup, cosine decay, cooldown at the minimum (timm's epoch semantics).

The rate is computed per optimizer step, so warmup and decay are smooth within an epoch:

    epochs:  [0, warmup)            warmup_lr -> lr, linear
             [warmup, epochs - cooldown)   lr -> min_lr, half cosine   ("constant": lr throughout)
             [epochs - cooldown, ...)      min_lr                       ("constant": lr)

`epochs` counts every epoch, warmup and cooldown included.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch

from compact_transformers.training.recipe import SCHEDULES

if TYPE_CHECKING:
    from compact_transformers.training.recipe import TrainConfig

logger = logging.getLogger(__name__)


def _check_schedule(
    *, steps_per_epoch: int, epochs: int, warmup_epochs: float, cooldown_epochs: float, sched: str
) -> None:
    if sched not in SCHEDULES:
        raise ValueError(f"sched must be one of {', '.join(SCHEDULES)}, got {sched!r}")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if warmup_epochs < 0 or cooldown_epochs < 0:
        raise ValueError(f"warmup_epochs and cooldown_epochs must be >= 0, got {warmup_epochs} and {cooldown_epochs}")
    if warmup_epochs + cooldown_epochs > epochs:
        raise ValueError(
            f"warmup_epochs ({warmup_epochs}) + cooldown_epochs ({cooldown_epochs}) must be <= epochs ({epochs})"
        )


def lr_at(
    step: int,
    *,
    steps_per_epoch: int,
    epochs: int,
    lr: float,
    min_lr: float,
    warmup_epochs: float,
    warmup_lr: float,
    cooldown_epochs: float,
    sched: str,
) -> float:
    """Learning rate for optimizer step `step` (0-based); steps past the end get the final rate."""
    _check_schedule(
        steps_per_epoch=steps_per_epoch, epochs=epochs, warmup_epochs=warmup_epochs,
        cooldown_epochs=cooldown_epochs, sched=sched,
    )  # fmt: skip
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    t = step / steps_per_epoch  # position in epochs
    if t < warmup_epochs:
        return warmup_lr + (lr - warmup_lr) * t / warmup_epochs
    if sched == "constant":
        return lr
    decay_epochs = epochs - warmup_epochs - cooldown_epochs
    if t >= warmup_epochs + decay_epochs:
        return min_lr
    progress = (t - warmup_epochs) / decay_epochs
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class LRSchedule:
    """Sets `param_group['lr']` of an optimizer from `lr_at`; call `step(i)` before optimizer step i.

    Construction already sets the rate of step 0. The schedule is a pure function of the step, so the
    only state is the last step; `load_state_dict` restores it and keeps this object's hyperparameters
    (a resumed run may change e.g. the epochs).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        steps_per_epoch: int,
        epochs: int,
        lr: float,
        min_lr: float,
        warmup_epochs: float,
        warmup_lr: float,
        cooldown_epochs: float,
        sched: str,
    ) -> None:
        _check_schedule(
            steps_per_epoch=steps_per_epoch, epochs=epochs, warmup_epochs=warmup_epochs,
            cooldown_epochs=cooldown_epochs, sched=sched,
        )  # fmt: skip
        self.optimizer = optimizer
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.lr = lr
        self.min_lr = min_lr
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.cooldown_epochs = cooldown_epochs
        self.sched = sched
        self.last_step = -1
        self.last_lr = float("nan")
        self.step(0)

    @classmethod
    def from_config(cls, optimizer: torch.optim.Optimizer, config: TrainConfig, *, steps_per_epoch: int) -> LRSchedule:
        """The schedule of a TrainConfig, peaking at `config.scaled_lr`."""
        return cls(
            optimizer,
            steps_per_epoch=steps_per_epoch,
            epochs=config.epochs,
            lr=config.scaled_lr,
            min_lr=config.min_lr,
            warmup_epochs=config.warmup_epochs,
            warmup_lr=config.warmup_lr,
            cooldown_epochs=config.cooldown_epochs,
            sched=config.sched,
        )

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def lr_at(self, step: int) -> float:
        """The rate of step `step` under this schedule (changes nothing)."""
        return lr_at(
            step,
            steps_per_epoch=self.steps_per_epoch,
            epochs=self.epochs,
            lr=self.lr,
            min_lr=self.min_lr,
            warmup_epochs=self.warmup_epochs,
            warmup_lr=self.warmup_lr,
            cooldown_epochs=self.cooldown_epochs,
            sched=self.sched,
        )

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
        return {
            "last_step": self.last_step,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "lr": self.lr,
            "min_lr": self.min_lr,
            "warmup_epochs": self.warmup_epochs,
            "warmup_lr": self.warmup_lr,
            "cooldown_epochs": self.cooldown_epochs,
            "sched": self.sched,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "last_step" not in state:
            raise ValueError(f"not an LRSchedule state: expected a 'last_step' key, got keys {sorted(state)}")
        changed = {k: (v, getattr(self, k)) for k, v in state.items() if k != "last_step" and getattr(self, k, v) != v}
        if changed:
            logger.info("schedule differs from the saved one (saved, now): %s", changed)
        self.step(int(state["last_step"]))
